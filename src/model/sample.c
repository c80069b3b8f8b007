/* sample.c: greedy and sampled decoding of one row of logits, in transformers' order
 * (TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper, then softmax + a draw). */
#include "vera/sample.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "vera/common.h"

void vd_sampler_init(vd_sampler *s, int32_t V, uint64_t seed) {
    memset(s, 0, sizeof(*s));
    s->V = V;
    s->work = mallocCheck(sizeof(float) * (size_t)V);
    s->order = mallocCheck(sizeof(int32_t) * (size_t)V);
    vd_mt19937_seed(&s->rng, seed);
}

void vd_sampler_free(vd_sampler *s) {
    free(s->work);
    free(s->order);
    memset(s, 0, sizeof(*s));
}

static int32_t sample_argmax(const float *x, int32_t V) {
    int32_t best = 0;
    for (int32_t i = 1; i < V; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* qsort has no context argument: the row being sorted */
static const float *g_sort_keys;
/* descending by value, then ascending by id (a fixed order for equal logits) */
static int sample_cmp_desc(const void *a, const void *b) {
    int32_t i = *(const int32_t *)a, j = *(const int32_t *)b;
    float x = g_sort_keys[i], y = g_sort_keys[j];
    if (x > y) return -1;
    if (x < y) return 1;
    return (i > j) - (i < j);
}

/* uniform in [0, 1) with 53 random bits */
static double sample_uniform(vd_mt19937 *g) {
    uint64_t a = vd_mt19937_next(g) >> 5, b = vd_mt19937_next(g) >> 6;
    return ((double)a * 67108864.0 + (double)b) / 9007199254740992.0;
}

int32_t vd_sample_next(vd_sampler *s, const float *logits, const vd_sample_options *o) {
    int32_t V = s->V;
    if (o->temperature <= 0.0f) return sample_argmax(logits, V);
    float *w = s->work;
    for (int32_t i = 0; i < V; i++) w[i] = logits[i] / o->temperature;
    /* sort once; top_k and top_p both read the order */
    int32_t *ord = s->order;
    for (int32_t i = 0; i < V; i++) ord[i] = i;
    g_sort_keys = w;
    qsort(ord, (size_t)V, sizeof(int32_t), sample_cmp_desc);
    int32_t keep = V; /* candidates are ord[0 .. keep) */
    if (o->top_k > 0 && o->top_k < V) {
        /* remove logits < the k-th largest: equal ones stay */
        float kth = w[ord[o->top_k - 1]];
        keep = o->top_k;
        while (keep < V && w[ord[keep]] >= kth) keep++;
    }
    /* softmax over the candidates */
    float maxv = w[ord[0]];
    double sum = 0.0;
    for (int32_t j = 0; j < keep; j++) sum += exp((double)w[ord[j]] - (double)maxv);
    if (o->top_p < 1.0f) {
        /* TopPLogitsWarper removes, from the least probable up, the tokens whose cumulative
         * probability is <= 1 - top_p, and always keeps the most probable one */
        double cum = 0.0, cut = 1.0 - (double)o->top_p;
        int32_t j = keep - 1;
        for (; j > 0; j--) {
            cum += exp((double)w[ord[j]] - (double)maxv) / sum;
            if (cum > cut) break;
        }
        keep = j + 1;
        sum = 0.0;
        for (j = 0; j < keep; j++) sum += exp((double)w[ord[j]] - (double)maxv);
    }
    /* inverse CDF in the sorted order */
    double u = sample_uniform(&s->rng) * sum, acc = 0.0;
    for (int32_t j = 0; j < keep; j++) {
        acc += exp((double)w[ord[j]] - (double)maxv);
        if (u < acc) return ord[j];
    }
    return ord[keep - 1];
}
