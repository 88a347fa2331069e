/* effedge_decode: the postprocessing of an effedge EfficientDet as a small C ABI, shared by the DeepStream
 * parser (nvdsinfer_effedge.cpp), the C++ example (examples/cpp) and any other host program.
 *
 * It replicates effedge.runtime.Detector exactly:
 *   - letterbox: scale = min(net_h / src_h, net_w / src_w), resized size rounded half-to-even (Python's round),
 *     image at the top-left corner; a box in network pixels maps back by multiplying by 1 / scale;
 *   - EfficientNMS layout (num_detections, detection_boxes, detection_scores, detection_classes): the first
 *     num_detections rows, those with score >= score_threshold, best first (stable), at most max_detections;
 *   - raw heads (boxes [N, 4] x1 y1 x2 y2 in network pixels, scores [N, C] after the sigmoid): candidates
 *     (anchor, class) with score > score_threshold, the pre_nms_top best of them, greedy NMS per class
 *     (a box is suppressed when IoU > iou_threshold, ties kept in anchor order), then all classes merged best
 *     first (stable: class, then NMS order) and cut to max_detections;
 *   - boxes multiplied by the mapping's factor and clipped to [0, width] x [0, height].
 * Plain C: no allocation is returned to the caller, no exceptions cross the boundary. */
#ifndef EFFEDGE_DECODE_H
#define EFFEDGE_DECODE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct effedge_letterbox {
    double scale;      /* network pixels per source pixel */
    int resized_width; /* the source image's size on the canvas (top-left corner) */
    int resized_height;
} effedge_letterbox;

typedef struct effedge_box_mapping {
    double factor; /* network pixels -> output pixels: 1 / letterbox scale, or 1 to stay in network pixels */
    int width;     /* boxes are clipped to [0, width] x [0, height] */
    int height;
} effedge_box_mapping;

typedef struct effedge_decode_config {
    float score_threshold; /* effedge's default 0.3 */
    float iou_threshold;   /* 0.5 */
    int max_detections;    /* 100 */
    int pre_nms_top;       /* raw heads only: candidates kept before NMS, 5000 */
} effedge_decode_config;

typedef struct effedge_detection {
    float x1, y1, x2, y2;
    float score;
    int32_t class_id; /* 0-based index of the model's head */
} effedge_detection;

/* effedge's defaults (those of effedge.runtime.Detector). */
effedge_decode_config effedge_default_config(void);

/* Letterbox of a src_width x src_height image into net_width x net_height; returns 0, or -1 on a
 * non-positive size. */
int effedge_letterbox_params(int src_width, int src_height, int net_width, int net_height,
                             effedge_letterbox* out);

/* The mapping of network-pixel boxes back to the source image of a letterbox. */
effedge_box_mapping effedge_mapping_to_source(const effedge_letterbox* letterbox, int src_width,
                                              int src_height);

/* EfficientNMS_TRT outputs of one image (capacity rows each). Writes at most out_capacity detections to out
 * and returns their number, or -1 on bad arguments. */
int effedge_decode_efficientnms(const effedge_decode_config* config, int32_t num_detections,
                                const float* detection_boxes, const float* detection_scores,
                                const int32_t* detection_classes, int capacity,
                                const effedge_box_mapping* mapping, effedge_detection* out, int out_capacity);

/* Raw heads of one image: boxes [anchors, 4], scores [anchors, classes] (row-major). Same return as above. */
int effedge_decode_raw(const effedge_decode_config* config, const float* boxes, const float* scores,
                       int anchors, int classes, const effedge_box_mapping* mapping, effedge_detection* out,
                       int out_capacity);

#ifdef __cplusplus
}
#endif

#endif /* EFFEDGE_DECODE_H */
