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
 *   - boxes multiplied by the mapping's factor and clipped to [0, width] x [0, height];
 *   - the image side (effedge.runtime.preprocess): the letterbox canvas, resampled as effedge resamples, and
 *     the float input format's normalization, bit for bit (build with -ffp-contract=off: a fused multiply-add
 *     would round differently from NumPy).
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

/* The letterbox fill of a model normalized with `mean` (RGB, as build.json's input.mean): round(mean * 255),
 * half to even, per channel (build.json records it as input.letterbox_fill). */
void effedge_mean_pixel(const double mean[3], uint8_t fill[3]);

/* effedge's letterbox of an RGB image (HWC uint8, rows src_stride bytes apart) onto a net_width x net_height
 * HWC uint8 canvas (rows net_width * 3 bytes apart): the canvas filled with `fill`, the image resized to the
 * letterbox's resized size and placed at the top-left corner. Resampling as effedge.runtime.preprocess: when
 * shrinking by k >= 2 along an axis, k-pixel block means first (edge pixels repeated in the last block), then
 * bilinear with half-pixel centres, rounded by adding 0.5 and truncating. Returns 0, or -1 on bad arguments
 * or no memory. */
int effedge_letterbox_image(const uint8_t* rgb, int src_width, int src_height, int src_stride, int net_width,
                            int net_height, const uint8_t fill[3], uint8_t* canvas);

/* The "float" input format from a canvas (HWC uint8 RGB, width x height): NCHW float32
 * (pixel / 255 - mean) / std, mean and std rounded to float first as NumPy does. Returns 0, or -1. */
int effedge_normalize_chw(const uint8_t* canvas, int width, int height, const double mean[3], const double std[3],
                          float* out);

/* The "pixels" input format from a canvas (HWC uint8 RGB, width x height): NCHW float32 pixel values 0-255 (the
 * graph normalizes them itself). Returns 0, or -1. */
int effedge_pixels_chw(const uint8_t* canvas, int width, int height, float* out);

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
