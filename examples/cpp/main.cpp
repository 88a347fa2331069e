// effedge_detect: run an effedge-compiled EfficientDet engine on one image, with TensorRT or TensorRT-RTX.
//
//   effedge_detect model.engine image.ppm [--threshold 0.3] [--mean 0.485,0.456,0.406] [--std 0.229,0.224,0.225]
//                  [--input-format float|pixels]
//
// The engine's output names pick the postprocessing:
//   num_detections, detection_boxes, detection_scores, detection_classes  the EfficientNMS_TRT tail (TensorRT);
//   boxes, scores                                                         raw heads: NMS on the host through
//                                                                         effedge's core (TensorRT-RTX has no
//                                                                         NMS plugin, so this is its path).
// The input is effedge's: [1, 3, H, W] float (normalized here) or, for --input-format uint8, [1, H, W, 3] uint8.
// A --input-format pixels engine ([1, 3, H, W] float RGB 0-255, normalized inside) has the float input's type, so
// the engine cannot say which it is: pass --input-format pixels (build.json's input.format) for one.
// Letterbox, normalization and decoding are effedge's own (effedge/native), so the detections are those of
// `effedge detect` on the same engine. --mean/--std: build.json's input.mean / input.std (ImageNet's by default;
// some Lite weights use 0.5). Images: binary PPM (P6, 8-bit) always; JPEG/PNG/... when built with OpenCV.
// Uses the name-based I/O API of TensorRT 8.5+ (getIOTensorName, setTensorAddress, enqueueV3), which
// TensorRT 10/11 and TensorRT-RTX keep.
#include <NvInfer.h>
#ifndef EFFEDGE_TENSORRT_RTX
#include <NvInferPlugin.h>
#endif
#include <cuda_runtime_api.h>

#ifdef EFFEDGE_WITH_OPENCV
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#endif

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "effedge_decode.h"

// Every CUDA call goes through this: a failure names the call, the file and the line.
#define CUDA_CHECK(call)                                                                                     \
    do {                                                                                                     \
        const cudaError_t status_ = (call);                                                                  \
        if (status_ != cudaSuccess)                                                                          \
            throw std::runtime_error(std::string(#call) + " failed at " + __FILE__ + ":" +                    \
                                     std::to_string(__LINE__) + ": " + cudaGetErrorString(status_));        \
    } while (0)

namespace {

class Logger : public nvinfer1::ILogger {
    void log(Severity severity, const char* message) noexcept override {
        if (severity <= Severity::kWARNING) std::cerr << "[TensorRT] " << message << "\n";
    }
};

struct RgbImage {
    int width = 0, height = 0;
    std::vector<uint8_t> pixels;  // HWC RGB, rows 3 * width bytes apart
};

std::vector<char> read_file(const std::string& path) {
    std::ifstream file(path, std::ios::binary | std::ios::ate);
    if (!file) throw std::runtime_error("cannot open " + path);
    std::vector<char> data(static_cast<size_t>(file.tellg()));
    file.seekg(0);
    file.read(data.data(), static_cast<std::streamsize>(data.size()));
    return data;
}

// Binary PPM (P6, maxval 255): the format any converter writes (`convert photo.jpg photo.ppm`, PIL's save).
RgbImage read_ppm(const std::string& path) {
    std::ifstream file(path, std::ios::binary);
    std::string magic;
    int maxval = 0;
    RgbImage image;
    const auto next_number = [&file]() {
        file >> std::ws;
        while (file.peek() == '#') {  // comments may sit between header fields
            std::string comment;
            std::getline(file, comment);
            file >> std::ws;
        }
        int value = -1;
        file >> value;
        return value;
    };
    if (!(file >> magic) || magic != "P6")
        throw std::runtime_error(path + " is not a binary PPM (P6); convert it, or build the example with OpenCV");
    image.width = next_number();
    image.height = next_number();
    maxval = next_number();
    if (!file || image.width <= 0 || image.height <= 0 || maxval != 255)
        throw std::runtime_error(path + ": unsupported PPM header (need P6 with maxval 255)");
    file.get();  // the single whitespace byte before the pixels
    image.pixels.resize(static_cast<size_t>(image.width) * image.height * 3);
    if (!file.read(reinterpret_cast<char*>(image.pixels.data()), static_cast<std::streamsize>(image.pixels.size())))
        throw std::runtime_error(path + ": the PPM's pixel data is truncated");
    return image;
}

RgbImage read_image(const std::string& path) {
#ifdef EFFEDGE_WITH_OPENCV
    if (path.size() < 4 || path.compare(path.size() - 4, 4, ".ppm") != 0) {
        const cv::Mat bgr = cv::imread(path, cv::IMREAD_COLOR);
        if (bgr.empty()) throw std::runtime_error("OpenCV cannot decode " + path);
        cv::Mat rgb;
        cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
        RgbImage image;
        image.width = rgb.cols;
        image.height = rgb.rows;
        image.pixels.resize(static_cast<size_t>(rgb.cols) * rgb.rows * 3);
        for (int y = 0; y < rgb.rows; ++y)
            std::memcpy(image.pixels.data() + static_cast<size_t>(y) * rgb.cols * 3, rgb.ptr<uint8_t>(y),
                        static_cast<size_t>(rgb.cols) * 3);
        return image;
    }
#endif
    return read_ppm(path);
}

std::vector<double> triple(const std::string& text, const char* option) {
    std::vector<double> values;
    std::stringstream stream(text);
    for (std::string item; std::getline(stream, item, ',');) values.push_back(std::stod(item));
    if (values.size() != 3) throw std::runtime_error(std::string(option) + " takes three numbers: R,G,B");
    return values;
}

size_t element_size(nvinfer1::DataType type) {
    switch (type) {
        case nvinfer1::DataType::kFLOAT:
        case nvinfer1::DataType::kINT32: return 4;
        case nvinfer1::DataType::kHALF: return 2;
        case nvinfer1::DataType::kUINT8:
        case nvinfer1::DataType::kINT8:
        case nvinfer1::DataType::kBOOL: return 1;
        default: throw std::runtime_error("the engine has a tensor of a type this example does not handle");
    }
}

int64_t volume(const nvinfer1::Dims& dims) {
    int64_t count = 1;
    for (int i = 0; i < dims.nbDims; ++i) count *= dims.d[i];
    return count;
}

// One I/O tensor of the engine: its device buffer and, for outputs, the host copy.
struct Tensor {
    nvinfer1::DataType type;
    nvinfer1::Dims shape;
    size_t bytes = 0;
    void* device = nullptr;
    std::vector<uint8_t> host;
    template <typename T> const T* data() const { return reinterpret_cast<const T*>(host.data()); }
};

struct DeviceBuffers {
    std::map<std::string, Tensor> tensors;
    ~DeviceBuffers() {
        for (auto& entry : tensors) cudaFree(entry.second.device);  // teardown: nothing to report to
    }
};

void expect(bool condition, const std::string& message) {
    if (!condition) throw std::runtime_error(message);
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 3) {
        std::cerr << "usage: " << argv[0]
                  << " model.engine image.ppm [--threshold T] [--mean R,G,B] [--std R,G,B] [--input-format float|pixels]\n";
        return 2;
    }
    try {
        effedge_decode_config config = effedge_default_config();
        std::vector<double> mean{0.485, 0.456, 0.406}, stdev{0.229, 0.224, 0.225};
        bool pixels_input = false;  // build.json's input.format "pixels": the graph normalizes itself
        for (int i = 3; i < argc; i += 2) {
            const std::string option = argv[i];
            if (i + 1 == argc) throw std::runtime_error(option + " needs a value");
            if (option == "--threshold") config.score_threshold = std::stof(argv[i + 1]);
            else if (option == "--mean") mean = triple(argv[i + 1], "--mean");
            else if (option == "--std") stdev = triple(argv[i + 1], "--std");
            else if (option == "--input-format") {
                const std::string format = argv[i + 1];
                if (format != "float" && format != "pixels")
                    throw std::runtime_error("--input-format " + format + ": use float or pixels (a uint8 engine "
                                             "is recognised by its input type)");
                pixels_input = format == "pixels";
            }
            else throw std::runtime_error("unknown option " + option);
        }

        Logger logger;
#ifndef EFFEDGE_TENSORRT_RTX
        initLibNvInferPlugins(&logger, "");  // registers EfficientNMS_TRT before the engine is deserialized
#endif
        const std::vector<char> plan = read_file(argv[1]);
        std::unique_ptr<nvinfer1::IRuntime> runtime{nvinfer1::createInferRuntime(logger)};
        expect(runtime != nullptr, "cannot create the TensorRT runtime");
        std::unique_ptr<nvinfer1::ICudaEngine> engine{runtime->deserializeCudaEngine(plan.data(), plan.size())};
        expect(engine != nullptr,
               "cannot deserialize the engine (built by another TensorRT version, or for another GPU?)");
        std::unique_ptr<nvinfer1::IExecutionContext> context{engine->createExecutionContext()};
        expect(context != nullptr, "cannot create an execution context");

        // The engine's I/O by name: one input, the outputs decide the layout.
        std::string input_name;
        std::vector<std::string> output_names;
        for (int i = 0; i < engine->getNbIOTensors(); ++i) {
            const char* name = engine->getIOTensorName(i);
            if (engine->getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT) {
                expect(input_name.empty(), "the engine has more than one input; effedge engines have one");
                input_name = name;
            } else {
                output_names.push_back(name);
            }
        }
        const auto has = [&](const char* name) {
            for (const std::string& output : output_names)
                if (output == name) return true;
            return false;
        };
        const bool efficientnms = has("num_detections") && has("detection_boxes") && has("detection_scores") &&
                                  has("detection_classes");
        expect(efficientnms || (has("boxes") && has("scores")),
               "the engine has neither EfficientNMS outputs nor raw boxes/scores heads; compile it with effedge "
               "(--nms efficientnms or --nms none)");

        nvinfer1::Dims input = engine->getTensorShape(input_name.c_str());
        const bool uint8_input = engine->getTensorDataType(input_name.c_str()) == nvinfer1::DataType::kUINT8;
        expect(input.nbDims == 4, "expected a 4-D input");
        if (input.d[0] == -1) {  // a dynamic-batch engine: run a batch of one
            input.d[0] = 1;
            expect(context->setInputShape(input_name.c_str(), input), "the engine's profile refuses batch 1");
        }
        const int height = static_cast<int>(uint8_input ? input.d[1] : input.d[2]);
        const int width = static_cast<int>(uint8_input ? input.d[2] : input.d[3]);
        expect(input.d[0] == 1 && (uint8_input ? input.d[3] : input.d[1]) == 3,
               "expected an input [1, 3, H, W] float or [1, H, W, 3] uint8");

        // effedge's letterbox (top-left, mean-colour fill, effedge's resampling), then its normalization.
        const RgbImage image = read_image(argv[2]);
        uint8_t fill[3];
        effedge_mean_pixel(mean.data(), fill);
        std::vector<uint8_t> canvas(static_cast<size_t>(width) * height * 3);
        expect(effedge_letterbox_image(image.pixels.data(), image.width, image.height, image.width * 3, width,
                                       height, fill, canvas.data()) == 0, "cannot letterbox the image");
        std::vector<float> chw;
        expect(!(uint8_input && pixels_input), "--input-format pixels given, but the engine's input is uint8");
        if (!uint8_input) {
            chw.resize(canvas.size());
            const int status = pixels_input ? effedge_pixels_chw(canvas.data(), width, height, chw.data())
                                            : effedge_normalize_chw(canvas.data(), width, height, mean.data(),
                                                                    stdev.data(), chw.data());
            expect(status == 0, "cannot make the input tensor");
        }
        effedge_letterbox letterbox;
        effedge_letterbox_params(image.width, image.height, width, height, &letterbox);
        const effedge_box_mapping mapping = effedge_mapping_to_source(&letterbox, image.width, image.height);

        DeviceBuffers buffers;
        for (int i = 0; i < engine->getNbIOTensors(); ++i) {
            const char* name = engine->getIOTensorName(i);
            Tensor tensor;
            tensor.type = engine->getTensorDataType(name);
            tensor.shape = context->getTensorShape(name);  // resolved for the batch set above
            expect(volume(tensor.shape) >= 0, std::string("tensor ") + name + " has an unresolved shape");
            tensor.bytes = static_cast<size_t>(volume(tensor.shape)) * element_size(tensor.type);
            CUDA_CHECK(cudaMalloc(&tensor.device, std::max<size_t>(tensor.bytes, 1)));
            buffers.tensors[name] = tensor;
            expect(context->setTensorAddress(name, buffers.tensors[name].device),
                   std::string("cannot bind tensor ") + name);
        }

        cudaStream_t stream;
        CUDA_CHECK(cudaStreamCreate(&stream));
        const Tensor& in = buffers.tensors[input_name];
        const void* host_input = uint8_input ? static_cast<const void*>(canvas.data()) : chw.data();
        CUDA_CHECK(cudaMemcpyAsync(in.device, host_input, in.bytes, cudaMemcpyHostToDevice, stream));
        expect(context->enqueueV3(stream), "enqueueV3 failed");
        for (const std::string& name : output_names) {
            Tensor& out = buffers.tensors[name];
            out.host.resize(out.bytes);
            CUDA_CHECK(cudaMemcpyAsync(out.host.data(), out.device, out.bytes, cudaMemcpyDeviceToHost, stream));
        }
        CUDA_CHECK(cudaStreamSynchronize(stream));
        CUDA_CHECK(cudaStreamDestroy(stream));

        std::vector<effedge_detection> detections(static_cast<size_t>(config.max_detections));
        int count = -1;
        if (efficientnms) {
            const Tensor& scores = buffers.tensors["detection_scores"];
            expect(scores.type == nvinfer1::DataType::kFLOAT, "detection_scores must be float");
            const int rows = static_cast<int>(scores.shape.d[scores.shape.nbDims - 1]);
            count = effedge_decode_efficientnms(
                &config, buffers.tensors["num_detections"].data<int32_t>()[0],
                buffers.tensors["detection_boxes"].data<float>(), scores.data<float>(),
                buffers.tensors["detection_classes"].data<int32_t>(), rows, &mapping, detections.data(),
                static_cast<int>(detections.size()));
        } else {
            const Tensor& boxes = buffers.tensors["boxes"];
            const Tensor& scores = buffers.tensors["scores"];
            expect(boxes.type == nvinfer1::DataType::kFLOAT && scores.type == nvinfer1::DataType::kFLOAT &&
                       scores.shape.nbDims == 3 && boxes.shape.nbDims == 3 && boxes.shape.d[1] == scores.shape.d[1] &&
                       boxes.shape.d[2] == 4,
                   "raw heads must be boxes [1, N, 4] and scores [1, N, C] float");
            count = effedge_decode_raw(&config, boxes.data<float>(), scores.data<float>(),
                                       static_cast<int>(scores.shape.d[1]), static_cast<int>(scores.shape.d[2]),
                                       &mapping, detections.data(), static_cast<int>(detections.size()));
        }
        expect(count >= 0, "cannot decode the engine's outputs");
        std::printf("%s: %d detection(s) (%s)\n", argv[2], count,
                    efficientnms ? "EfficientNMS" : "raw heads + host NMS");
        for (int i = 0; i < count; ++i) {
            const effedge_detection& d = detections[static_cast<size_t>(i)];
            std::printf("class %d  score %.4f  box %.2f %.2f %.2f %.2f\n", d.class_id, d.score, d.x1, d.y1, d.x2,
                        d.y2);
        }
    } catch (const std::exception& error) {
        std::cerr << "error: " << error.what() << "\n";
        return 1;
    }
    return 0;
}
