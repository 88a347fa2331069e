/* DeepStream (nvinfer) custom bounding-box parsers for effedge EfficientDet engines: a thin adapter over the
 * decoding core (effedge_decode.h), so DeepStream, the C++ example and effedge.runtime decode identically.
 *
 *   parse-bbox-func-name=NvDsInferParseEffedgeNms   engines with the EfficientNMS tail
 *   parse-bbox-func-name=NvDsInferParseEffedgeRaw   engines with the raw heads
 *   custom-lib-path=libnvds_effedge_parser.so
 *
 * Boxes are returned in network-input pixels (mapping factor 1, clipped to the network size): nvinfer maps
 * network -> frame coordinates itself. That mapping matches effedge's letterbox (image at the top-left corner)
 * only with maintain-aspect-ratio=1 and symmetric-padding=0 in the nvinfer config.
 *
 * The raw-heads parser runs the core's NMS, whose IoU threshold and box count nvinfer's parser interface does not
 * carry: `effedge package --format deepstream` writes the build's values (build.json's compile config) into
 * effedge_parser_config.h beside this file (EFFEDGE_IOU_THRESHOLD, EFFEDGE_MAX_DETECTIONS); without that header
 * the core's defaults apply (IoU 0.5, 100 detections). The score threshold comes from the nvinfer config. */
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "effedge_decode.h"
#include "nvdsinfer_custom_impl.h"
#if defined(__has_include)
#if __has_include("effedge_parser_config.h")
#include "effedge_parser_config.h"
#endif
#endif

namespace {

const NvDsInferLayerInfo* find_layer(std::vector<NvDsInferLayerInfo> const& layers, const char* name,
                                     NvDsInferDataType type, const char* parser) {
    for (const NvDsInferLayerInfo& layer : layers) {
        if (layer.layerName != nullptr && std::strcmp(layer.layerName, name) == 0) {
            if (layer.dataType != type) {
                std::fprintf(stderr, "%s: output '%s' has the wrong data type (%d); re-export the model with effedge\n",
                             parser, name, static_cast<int>(layer.dataType));
                return nullptr;
            }
            return &layer;
        }
    }
    std::fprintf(stderr,
                 "%s: the engine has no output named '%s'; use the parser matching the export's tail "
                 "(NvDsInferParseEffedgeNms for efficientnms, NvDsInferParseEffedgeRaw for raw heads)\n",
                 parser, name);
    return nullptr;
}

// The core applies one threshold; DeepStream gives one per class. Decode with the lowest of them, then drop
// each detection below its own class's threshold (and classes beyond numClassesConfigured).
effedge_decode_config config_for(NvDsInferParseDetectionParams const& params) {
    effedge_decode_config config = effedge_default_config();
#ifdef EFFEDGE_IOU_THRESHOLD
    config.iou_threshold = EFFEDGE_IOU_THRESHOLD;
#endif
#ifdef EFFEDGE_MAX_DETECTIONS
    config.max_detections = EFFEDGE_MAX_DETECTIONS;
#endif
    if (!params.perClassPreclusterThreshold.empty()) {
        config.score_threshold = *std::min_element(params.perClassPreclusterThreshold.begin(),
                                                   params.perClassPreclusterThreshold.end());
    }
    return config;
}

effedge_box_mapping network_mapping(NvDsInferNetworkInfo const& network) {
    effedge_box_mapping mapping;
    mapping.factor = 1.0;
    mapping.width = static_cast<int>(network.width);
    mapping.height = static_cast<int>(network.height);
    return mapping;
}

void append_objects(std::vector<effedge_detection> const& detections, int count,
                    NvDsInferParseDetectionParams const& params, std::vector<NvDsInferObjectDetectionInfo>& objects) {
    const std::vector<float>& thresholds = params.perClassPreclusterThreshold;
    for (int i = 0; i < count; ++i) {
        const effedge_detection& d = detections[static_cast<size_t>(i)];
        const auto class_id = static_cast<unsigned int>(d.class_id);
        if (d.class_id < 0 || class_id >= params.numClassesConfigured) {
            continue;
        }
        if (class_id < thresholds.size() && d.score < thresholds[class_id]) {
            continue;
        }
        NvDsInferObjectDetectionInfo object{};
        object.classId = class_id;
        object.left = d.x1;
        object.top = d.y1;
        object.width = d.x2 - d.x1;
        object.height = d.y2 - d.y1;
        object.detectionConfidence = d.score;
        objects.push_back(object);
    }
}

}  // namespace

extern "C" bool NvDsInferParseEffedgeNms(std::vector<NvDsInferLayerInfo> const& outputLayersInfo,
                                         NvDsInferNetworkInfo const& networkInfo,
                                         NvDsInferParseDetectionParams const& detectionParams,
                                         std::vector<NvDsInferObjectDetectionInfo>& objectList) {
    const char* parser = "NvDsInferParseEffedgeNms";
    // effedge's EfficientNMS tail emits boxes as x1, y1, x2, y2 (box_coding 0), not TF's y1, x1, y2, x2.
    const NvDsInferLayerInfo* num = find_layer(outputLayersInfo, "num_detections", INT32, parser);
    const NvDsInferLayerInfo* boxes = find_layer(outputLayersInfo, "detection_boxes", FLOAT, parser);
    const NvDsInferLayerInfo* scores = find_layer(outputLayersInfo, "detection_scores", FLOAT, parser);
    const NvDsInferLayerInfo* classes = find_layer(outputLayersInfo, "detection_classes", INT32, parser);
    if (num == nullptr || boxes == nullptr || scores == nullptr || classes == nullptr) {
        return false;
    }
    const int capacity = static_cast<int>(scores->inferDims.numElements);  // rows per image (batch excluded)
    if (num->inferDims.numElements < 1 || boxes->inferDims.numElements != 4u * scores->inferDims.numElements ||
        classes->inferDims.numElements != scores->inferDims.numElements) {
        std::fprintf(stderr, "%s: the EfficientNMS outputs do not have shapes [1], [K, 4], [K] and [K]; re-export "
                     "the model with effedge\n", parser);
        return false;
    }
    effedge_decode_config config = config_for(detectionParams);
    // The tail already cut to the build's --max-detections (its rows); nvinfer's topk is that number too.
    config.max_detections = capacity;
    const effedge_box_mapping mapping = network_mapping(networkInfo);
    std::vector<effedge_detection> detections(static_cast<size_t>(std::max(capacity, 1)));
    const int count = effedge_decode_efficientnms(
        &config, *static_cast<const int32_t*>(num->buffer), static_cast<const float*>(boxes->buffer),
        static_cast<const float*>(scores->buffer), static_cast<const int32_t*>(classes->buffer), capacity, &mapping,
        detections.data(), static_cast<int>(detections.size()));
    if (count < 0) {
        std::fprintf(stderr, "%s: the EfficientNMS outputs are inconsistent (capacity %d)\n", parser, capacity);
        return false;
    }
    append_objects(detections, count, detectionParams, objectList);
    return true;
}

extern "C" bool NvDsInferParseEffedgeRaw(std::vector<NvDsInferLayerInfo> const& outputLayersInfo,
                                         NvDsInferNetworkInfo const& networkInfo,
                                         NvDsInferParseDetectionParams const& detectionParams,
                                         std::vector<NvDsInferObjectDetectionInfo>& objectList) {
    const char* parser = "NvDsInferParseEffedgeRaw";
    // effedge's raw heads: boxes [anchors, 4] x1 y1 x2 y2 in network pixels, scores [anchors, classes] after
    // the sigmoid (inferDims exclude the batch axis).
    const NvDsInferLayerInfo* boxes = find_layer(outputLayersInfo, "boxes", FLOAT, parser);
    const NvDsInferLayerInfo* scores = find_layer(outputLayersInfo, "scores", FLOAT, parser);
    if (boxes == nullptr || scores == nullptr) {
        return false;
    }
    const NvDsInferDims& score_dims = scores->inferDims;
    if (score_dims.numDims < 2 || boxes->inferDims.numElements != score_dims.d[0] * 4) {
        std::fprintf(stderr, "%s: 'boxes' and 'scores' do not have shapes [anchors, 4] and [anchors, classes]\n",
                     parser);
        return false;
    }
    const int anchors = static_cast<int>(score_dims.d[0]);
    const int classes = static_cast<int>(score_dims.d[score_dims.numDims - 1]);
    const effedge_decode_config config = config_for(detectionParams);
    const effedge_box_mapping mapping = network_mapping(networkInfo);
    std::vector<effedge_detection> detections(static_cast<size_t>(config.max_detections));
    const int count = effedge_decode_raw(&config, static_cast<const float*>(boxes->buffer),
                                         static_cast<const float*>(scores->buffer), anchors, classes, &mapping,
                                         detections.data(), static_cast<int>(detections.size()));
    if (count < 0) {
        std::fprintf(stderr, "%s: could not decode %d anchors x %d classes\n", parser, anchors, classes);
        return false;
    }
    append_objects(detections, count, detectionParams, objectList);
    return true;
}

CHECK_CUSTOM_PARSE_FUNC_PROTOTYPE(NvDsInferParseEffedgeNms);
CHECK_CUSTOM_PARSE_FUNC_PROTOTYPE(NvDsInferParseEffedgeRaw);
