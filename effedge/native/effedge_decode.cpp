// The decoding core behind effedge_decode.h: C++17, no dependencies. Each step mirrors
// effedge.runtime.nms.select_detections and Detector._detections, so hosts agree with the Python runtime.
#include "effedge_decode.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <new>
#include <vector>

namespace {

struct Candidate {
    int anchor;
    int class_id;
    float score;
};

float area(const float* box) {
    return std::max(box[2] - box[0], 0.0f) * std::max(box[3] - box[1], 0.0f);
}

float iou(const float* a, const float* b) {
    const float inter = std::max(std::min(a[2], b[2]) - std::max(a[0], b[0]), 0.0f) *
                        std::max(std::min(a[3], b[3]) - std::max(a[1], b[1]), 0.0f);
    const float uni = area(a) + area(b) - inter;
    return uni > 0 ? inter / std::max(uni, 1e-12f) : 0.0f;
}

// Greedy NMS of one class's candidates (indices into `all`), best first, ties in candidate order.
void nms_class(const std::vector<Candidate>& all, std::vector<int> members, const float* boxes, float threshold,
               std::vector<int>& kept) {
    std::stable_sort(members.begin(), members.end(),
                     [&](int a, int b) { return all[a].score > all[b].score; });
    std::vector<bool> suppressed(members.size(), false);
    for (size_t i = 0; i < members.size(); ++i) {
        if (suppressed[i]) continue;
        kept.push_back(members[i]);
        const float* best = boxes + 4 * static_cast<size_t>(all[members[i]].anchor);
        for (size_t j = i + 1; j < members.size(); ++j)
            if (!suppressed[j] && iou(best, boxes + 4 * static_cast<size_t>(all[members[j]].anchor)) > threshold)
                suppressed[j] = true;
    }
}

effedge_detection mapped(const float* box, float score, int class_id, const effedge_box_mapping& mapping) {
    const float limits[4] = {static_cast<float>(mapping.width), static_cast<float>(mapping.height),
                             static_cast<float>(mapping.width), static_cast<float>(mapping.height)};
    float out[4];
    for (int k = 0; k < 4; ++k)
        out[k] = std::clamp(static_cast<float>(box[k] * static_cast<float>(mapping.factor)), 0.0f, limits[k]);
    return effedge_detection{out[0], out[1], out[2], out[3], score, class_id};
}

// One axis of effedge's bilinear resize: for each destination pixel, the two source samples and the weight of
// the second, computed in double then rounded to float in NumPy's order of operations.
struct Taps {
    std::vector<int> low, high;
    std::vector<float> weight;
};

Taps axis_taps(int dst, int src, int factor) {
    const int last = (src + factor - 1) / factor - 1;
    Taps taps;
    taps.low.resize(static_cast<size_t>(dst));
    taps.high.resize(static_cast<size_t>(dst));
    taps.weight.resize(static_cast<size_t>(dst));
    for (int i = 0; i < dst; ++i) {
        const double coord = std::clamp((i + 0.5) * (static_cast<double>(src) / dst) / factor - 0.5, 0.0,
                                        static_cast<double>(last));
        const double low = std::floor(coord);
        taps.low[i] = static_cast<int>(low);
        taps.high[i] = std::min(taps.low[i] + 1, last);
        taps.weight[i] = static_cast<float>(coord - low);
    }
    return taps;
}

// effedge.runtime.preprocess.resize_bilinear into dst (rows dst_stride bytes apart).
void resize_into(const uint8_t* src, int src_w, int src_h, size_t src_stride, int dst_w, int dst_h, uint8_t* dst,
                 size_t dst_stride) {
    if (src_w == dst_w && src_h == dst_h) {
        for (int y = 0; y < src_h; ++y)
            std::memcpy(dst + y * dst_stride, src + y * src_stride, 3 * static_cast<size_t>(src_w));
        return;
    }
    const int fh = std::max(1, src_h / dst_h), fw = std::max(1, src_w / dst_w);
    const int rows = (src_h + fh - 1) / fh, cols = (src_w + fw - 1) / fw;
    // block means in float32: sums of at most fh * fw bytes are exact, the mean rounds once (as NumPy's)
    std::vector<float> image(static_cast<size_t>(rows) * cols * 3);
    const double count = static_cast<double>(fh) * fw;
    for (int by = 0; by < rows; ++by)
        for (int bx = 0; bx < cols; ++bx)
            for (int c = 0; c < 3; ++c) {
                float sum = 0.0f;
                for (int dy = 0; dy < fh; ++dy) {
                    const uint8_t* row = src + std::min(by * fh + dy, src_h - 1) * src_stride;
                    for (int dx = 0; dx < fw; ++dx) sum += row[3 * std::min(bx * fw + dx, src_w - 1) + c];
                }
                image[(static_cast<size_t>(by) * cols + bx) * 3 + c] = static_cast<float>(sum / count);
            }
    const Taps ty = axis_taps(dst_h, src_h, fh), tx = axis_taps(dst_w, src_w, fw);
    const auto at = [&](int y, int x, int c) { return image[(static_cast<size_t>(y) * cols + x) * 3 + c]; };
    for (int y = 0; y < dst_h; ++y) {
        const float wy = ty.weight[y];
        for (int x = 0; x < dst_w; ++x) {
            const float wx = tx.weight[x];
            for (int c = 0; c < 3; ++c) {
                const float top = at(ty.low[y], tx.low[x], c) * (1.0f - wx) + at(ty.low[y], tx.high[x], c) * wx;
                const float bottom = at(ty.high[y], tx.low[x], c) * (1.0f - wx) + at(ty.high[y], tx.high[x], c) * wx;
                const float value = std::clamp(top * (1.0f - wy) + bottom * wy + 0.5f, 0.0f, 255.0f);
                dst[y * dst_stride + 3 * static_cast<size_t>(x) + c] = static_cast<uint8_t>(value);
            }
        }
    }
}

}  // namespace

extern "C" {

void effedge_mean_pixel(const double mean[3], uint8_t fill[3]) {
    for (int c = 0; c < 3; ++c)
        fill[c] = static_cast<uint8_t>(std::clamp(std::nearbyint(mean[c] * 255.0), 0.0, 255.0));
}

int effedge_letterbox_image(const uint8_t* rgb, int src_width, int src_height, int src_stride, int net_width,
                            int net_height, const uint8_t fill[3], uint8_t* canvas) {
    effedge_letterbox letterbox;
    if (!rgb || !fill || !canvas || src_stride < 3 * src_width ||
        effedge_letterbox_params(src_width, src_height, net_width, net_height, &letterbox) != 0)
        return -1;
    const size_t stride = 3 * static_cast<size_t>(net_width);
    for (size_t i = 0; i < stride * net_height; i += 3) std::memcpy(canvas + i, fill, 3);
    try {
        resize_into(rgb, src_width, src_height, static_cast<size_t>(src_stride), letterbox.resized_width,
                    letterbox.resized_height, canvas, stride);
    } catch (const std::bad_alloc&) {
        return -1;
    }
    return 0;
}

int effedge_normalize_chw(const uint8_t* canvas, int width, int height, const double mean[3], const double std[3],
                          float* out) {
    if (!canvas || !mean || !std || !out || width <= 0 || height <= 0) return -1;
    const size_t plane = static_cast<size_t>(width) * height;
    for (int c = 0; c < 3; ++c) {
        const float m = static_cast<float>(mean[c]), s = static_cast<float>(std[c]);
        for (size_t i = 0; i < plane; ++i) out[c * plane + i] = (canvas[3 * i + c] / 255.0f - m) / s;
    }
    return 0;
}

int effedge_pixels_chw(const uint8_t* canvas, int width, int height, float* out) {
    if (!canvas || !out || width <= 0 || height <= 0) return -1;
    const size_t plane = static_cast<size_t>(width) * height;
    for (int c = 0; c < 3; ++c)
        for (size_t i = 0; i < plane; ++i) out[c * plane + i] = static_cast<float>(canvas[3 * i + c]);
    return 0;
}

effedge_decode_config effedge_default_config(void) { return effedge_decode_config{0.3f, 0.5f, 100, 5000}; }

int effedge_letterbox_params(int src_width, int src_height, int net_width, int net_height, effedge_letterbox* out) {
    if (!out || src_width <= 0 || src_height <= 0 || net_width <= 0 || net_height <= 0) return -1;
    const double scale = std::min(static_cast<double>(net_height) / src_height,
                                  static_cast<double>(net_width) / src_width);
    // std::nearbyint rounds half to even under the default rounding mode, as Python's round does
    out->scale = scale;
    out->resized_width = std::max(1, static_cast<int>(std::nearbyint(src_width * scale)));
    out->resized_height = std::max(1, static_cast<int>(std::nearbyint(src_height * scale)));
    return 0;
}

effedge_box_mapping effedge_mapping_to_source(const effedge_letterbox* letterbox, int src_width, int src_height) {
    return effedge_box_mapping{letterbox ? 1.0 / letterbox->scale : 1.0, src_width, src_height};
}

int effedge_decode_efficientnms(const effedge_decode_config* config, int32_t num_detections,
                                const float* detection_boxes, const float* detection_scores,
                                const int32_t* detection_classes, int capacity,
                                const effedge_box_mapping* mapping, effedge_detection* out, int out_capacity) {
    if (!config || !mapping || !detection_boxes || !detection_scores || !detection_classes || capacity < 0 ||
        (out_capacity > 0 && !out))
        return -1;
    const int count = std::clamp(static_cast<int>(num_detections), 0, capacity);
    std::vector<int> order;
    for (int i = 0; i < count; ++i)
        if (detection_scores[i] >= config->score_threshold) order.push_back(i);
    std::stable_sort(order.begin(), order.end(),
                     [&](int a, int b) { return detection_scores[a] > detection_scores[b]; });
    const int written = std::min({static_cast<int>(order.size()), std::max(config->max_detections, 0), out_capacity});
    for (int i = 0; i < written; ++i) {
        const int row = order[i];
        out[i] = mapped(detection_boxes + 4 * static_cast<size_t>(row), detection_scores[row],
                        detection_classes[row], *mapping);
    }
    return written;
}

int effedge_decode_raw(const effedge_decode_config* config, const float* boxes, const float* scores, int anchors,
                       int classes, const effedge_box_mapping* mapping, effedge_detection* out, int out_capacity) {
    if (!config || !mapping || !boxes || !scores || anchors < 0 || classes <= 0 || (out_capacity > 0 && !out))
        return -1;
    std::vector<Candidate> candidates;  // row-major (anchor, class) order, as np.nonzero
    for (int a = 0; a < anchors; ++a)
        for (int c = 0; c < classes; ++c) {
            const float score = scores[static_cast<size_t>(a) * classes + c];
            if (score > config->score_threshold) candidates.push_back(Candidate{a, c, score});
        }
    if (config->pre_nms_top >= 0 && static_cast<int>(candidates.size()) > config->pre_nms_top) {
        std::stable_sort(candidates.begin(), candidates.end(),
                         [](const Candidate& x, const Candidate& y) { return x.score > y.score; });
        candidates.resize(static_cast<size_t>(config->pre_nms_top));
    }
    std::vector<std::vector<int>> by_class(static_cast<size_t>(classes));
    for (size_t i = 0; i < candidates.size(); ++i) by_class[candidates[i].class_id].push_back(static_cast<int>(i));
    std::vector<int> kept;
    for (const auto& members : by_class)
        if (!members.empty()) nms_class(candidates, members, boxes, config->iou_threshold, kept);
    std::stable_sort(kept.begin(), kept.end(),
                     [&](int a, int b) { return candidates[a].score > candidates[b].score; });
    const int written = std::min({static_cast<int>(kept.size()), std::max(config->max_detections, 0), out_capacity});
    for (int i = 0; i < written; ++i) {
        const Candidate& c = candidates[kept[i]];
        out[i] = mapped(boxes + 4 * static_cast<size_t>(c.anchor), c.score, c.class_id, *mapping);
    }
    return written;
}

}  // extern "C"
