// effedge_detect: run an effedge-compiled EfficientDet engine (EfficientNMS tail) on one image.
//
//   effedge_detect model.fp16.engine image.jpg [score_threshold]
//
// The engine must come from `effedge compile ... --backend tensorrt` (default NMS tail: efficientnms) with a
// static batch of 1 and the default float input: NCHW RGB, ImageNet mean/std normalization, letterboxed to
// the input size at the top-left corner on a mean-colour canvas (see build.json next to the engine).
// Built with TensorRT 8.5+ (setTensorAddress/enqueueV3); not compiled in effedge's CI (no TensorRT there).
#include <NvInfer.h>
#include <NvInferPlugin.h>
#include <cuda_runtime_api.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

class Logger : public nvinfer1::ILogger {
    void log(Severity severity, const char* message) noexcept override {
        if (severity <= Severity::kWARNING) std::cerr << "[TensorRT] " << message << "\n";
    }
};

void check(cudaError_t status, const char* what) {
    if (status != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
}

std::vector<char> readFile(const std::string& path) {
    std::ifstream file(path, std::ios::binary | std::ios::ate);
    if (!file) throw std::runtime_error("cannot open " + path);
    std::vector<char> data(static_cast<size_t>(file.tellg()));
    file.seekg(0);
    file.read(data.data(), static_cast<std::streamsize>(data.size()));
    return data;
}

// Letterbox exactly as effedge does: keep the aspect ratio, place at the top-left, fill with the mean colour,
// then normalize with ImageNet mean/std into planar (CHW) float. Returns the scale for mapping boxes back.
float letterbox(const cv::Mat& bgr, int height, int width, std::vector<float>& chw) {
    static const float mean[3] = {0.485f, 0.456f, 0.406f}, stdev[3] = {0.229f, 0.224f, 0.225f};
    const float scale = std::min(static_cast<float>(height) / bgr.rows, static_cast<float>(width) / bgr.cols);
    const int newH = std::max(1, static_cast<int>(std::lround(bgr.rows * scale)));
    const int newW = std::max(1, static_cast<int>(std::lround(bgr.cols * scale)));
    cv::Mat rgb, resized;
    cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
    cv::resize(rgb, resized, cv::Size(newW, newH), 0, 0, cv::INTER_LINEAR);
    chw.assign(static_cast<size_t>(3) * height * width, 0.0f);  // 0 after normalization = the mean colour
    for (int y = 0; y < newH; ++y) {
        const auto* row = resized.ptr<cv::Vec3b>(y);
        for (int x = 0; x < newW; ++x)
            for (int c = 0; c < 3; ++c)
                chw[(static_cast<size_t>(c) * height + y) * width + x] = (row[x][c] / 255.0f - mean[c]) / stdev[c];
    }
    return scale;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 3) {
        std::cerr << "usage: " << argv[0] << " model.engine image.jpg [score_threshold]\n";
        return 2;
    }
    const float threshold = argc > 3 ? std::stof(argv[3]) : 0.3f;
    try {
        Logger logger;
        initLibNvInferPlugins(&logger, "");  // registers EfficientNMS_TRT
        const std::vector<char> plan = readFile(argv[1]);
        std::unique_ptr<nvinfer1::IRuntime> runtime{nvinfer1::createInferRuntime(logger)};
        std::unique_ptr<nvinfer1::ICudaEngine> engine{runtime->deserializeCudaEngine(plan.data(), plan.size())};
        if (!engine) throw std::runtime_error("cannot deserialize the engine (other TensorRT version or GPU?)");
        std::unique_ptr<nvinfer1::IExecutionContext> context{engine->createExecutionContext()};

        const nvinfer1::Dims input = engine->getTensorShape("images");
        if (input.nbDims != 4 || input.d[0] != 1 || input.d[1] != 3)
            throw std::runtime_error("expected an input 'images' of shape [1, 3, H, W]");
        const int height = static_cast<int>(input.d[2]), width = static_cast<int>(input.d[3]);
        const int maxDetections = static_cast<int>(engine->getTensorShape("detection_scores").d[1]);

        const cv::Mat image = cv::imread(argv[2], cv::IMREAD_COLOR);
        if (image.empty()) throw std::runtime_error(std::string("cannot decode ") + argv[2]);
        std::vector<float> chw;
        const float scale = letterbox(image, height, width, chw);

        // Device buffers, bound by tensor name (TensorRT 8.5+), one stream for copies and inference.
        struct Binding { const char* name; size_t bytes; void* device; };
        std::vector<Binding> bindings = {
            {"images", chw.size() * sizeof(float), nullptr},
            {"num_detections", sizeof(int32_t), nullptr},
            {"detection_boxes", static_cast<size_t>(maxDetections) * 4 * sizeof(float), nullptr},
            {"detection_scores", static_cast<size_t>(maxDetections) * sizeof(float), nullptr},
            {"detection_classes", static_cast<size_t>(maxDetections) * sizeof(int32_t), nullptr}};
        for (auto& binding : bindings) {
            check(cudaMalloc(&binding.device, binding.bytes), "cudaMalloc");
            if (!context->setTensorAddress(binding.name, binding.device))
                throw std::runtime_error(std::string("the engine has no tensor ") + binding.name);
        }
        cudaStream_t stream;
        check(cudaStreamCreate(&stream), "cudaStreamCreate");
        check(cudaMemcpyAsync(bindings[0].device, chw.data(), bindings[0].bytes, cudaMemcpyHostToDevice, stream),
              "copy input");
        if (!context->enqueueV3(stream)) throw std::runtime_error("enqueueV3 failed");

        int32_t count = 0;
        std::vector<float> boxes(static_cast<size_t>(maxDetections) * 4), scores(maxDetections);
        std::vector<int32_t> classes(maxDetections);
        check(cudaMemcpyAsync(&count, bindings[1].device, bindings[1].bytes, cudaMemcpyDeviceToHost, stream), "copy");
        check(cudaMemcpyAsync(boxes.data(), bindings[2].device, bindings[2].bytes, cudaMemcpyDeviceToHost, stream),
              "copy");
        check(cudaMemcpyAsync(scores.data(), bindings[3].device, bindings[3].bytes, cudaMemcpyDeviceToHost, stream),
              "copy");
        check(cudaMemcpyAsync(classes.data(), bindings[4].device, bindings[4].bytes, cudaMemcpyDeviceToHost, stream),
              "copy");
        check(cudaStreamSynchronize(stream), "synchronize");

        // Boxes are (x1, y1, x2, y2) in model pixels: divide by the letterbox scale, clip to the image.
        for (int i = 0; i < count; ++i) {
            if (scores[i] < threshold) continue;
            float box[4];
            for (int k = 0; k < 4; ++k) {
                const float limit = static_cast<float>(k % 2 == 0 ? image.cols : image.rows);
                box[k] = std::clamp(boxes[4 * i + k] / scale, 0.0f, limit);
            }
            std::printf("class %d  score %.3f  box %.1f %.1f %.1f %.1f\n", classes[i], scores[i], box[0], box[1],
                        box[2], box[3]);
        }
        for (auto& binding : bindings) cudaFree(binding.device);
        cudaStreamDestroy(stream);
    } catch (const std::exception& error) {
        std::cerr << "error: " << error.what() << "\n";
        return 1;
    }
    return 0;
}
