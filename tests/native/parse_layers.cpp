// Test harness: hands output tensors read from files to effedge's DeepStream parsers as nvinfer does (layer infos
// without the batch axis, one threshold per class) and prints the objects they return, one per line.
//
//   parse_layers nms|raw NET_WIDTH NET_HEIGHT CLASSES THRESHOLD DIR
//
// DIR holds each output as raw little-endian bytes, <name>.bin, and <name>.shape (its dims, spaces between).
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "nvdsinfer_custom_impl.h"

extern "C" bool NvDsInferParseEffedgeNms(std::vector<NvDsInferLayerInfo> const&, NvDsInferNetworkInfo const&,
                                         NvDsInferParseDetectionParams const&,
                                         std::vector<NvDsInferObjectDetectionInfo>&);
extern "C" bool NvDsInferParseEffedgeRaw(std::vector<NvDsInferLayerInfo> const&, NvDsInferNetworkInfo const&,
                                         NvDsInferParseDetectionParams const&,
                                         std::vector<NvDsInferObjectDetectionInfo>&);

namespace {

struct Layer {
    std::string name;
    std::vector<char> bytes;
    NvDsInferDims dims{};
};

Layer read_layer(const std::string& dir, const std::string& name) {
    Layer layer;
    layer.name = name;
    std::ifstream data(dir + "/" + name + ".bin", std::ios::binary);
    layer.bytes.assign(std::istreambuf_iterator<char>(data), std::istreambuf_iterator<char>());
    std::ifstream shape(dir + "/" + name + ".shape");
    layer.dims.numElements = 1;
    for (unsigned int d; shape >> d;) {
        layer.dims.d[layer.dims.numDims++] = d;
        layer.dims.numElements *= d;
    }
    return layer;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 7) {
        std::fprintf(stderr, "usage: %s nms|raw NET_WIDTH NET_HEIGHT CLASSES THRESHOLD DIR\n", argv[0]);
        return 2;
    }
    const std::string kind = argv[1];
    const bool nms = kind == "nms";
    std::vector<Layer> layers;
    const std::vector<std::pair<const char*, NvDsInferDataType>> names =
        nms ? std::vector<std::pair<const char*, NvDsInferDataType>>{{"num_detections", INT32},
                                                                     {"detection_boxes", FLOAT},
                                                                     {"detection_scores", FLOAT},
                                                                     {"detection_classes", INT32}}
            : std::vector<std::pair<const char*, NvDsInferDataType>>{{"boxes", FLOAT}, {"scores", FLOAT}};
    for (const auto& name : names) layers.push_back(read_layer(argv[6], name.first));
    std::vector<NvDsInferLayerInfo> infos;
    for (size_t i = 0; i < layers.size(); ++i) {
        NvDsInferLayerInfo info{};
        info.dataType = names[i].second;
        info.inferDims = layers[i].dims;
        info.bindingIndex = static_cast<int>(i) + 1;
        info.layerName = layers[i].name.c_str();
        info.buffer = layers[i].bytes.data();
        info.isInput = 0;
        infos.push_back(info);
    }
    NvDsInferNetworkInfo network{static_cast<unsigned int>(std::atoi(argv[2])),
                                 static_cast<unsigned int>(std::atoi(argv[3])), 3};
    NvDsInferParseDetectionParams params;
    params.numClassesConfigured = static_cast<unsigned int>(std::atoi(argv[4]));
    params.perClassPreclusterThreshold.assign(params.numClassesConfigured, static_cast<float>(std::atof(argv[5])));
    params.perClassPostclusterThreshold = params.perClassPreclusterThreshold;
    std::vector<NvDsInferObjectDetectionInfo> objects;
    const bool parsed = nms ? NvDsInferParseEffedgeNms(infos, network, params, objects)
                            : NvDsInferParseEffedgeRaw(infos, network, params, objects);
    if (!parsed) return 1;
    for (const NvDsInferObjectDetectionInfo& o : objects)
        std::printf("%u %.7g %.7g %.7g %.7g %.7g\n", o.classId, o.detectionConfidence, o.left, o.top, o.width,
                    o.height);
    return 0;
}
