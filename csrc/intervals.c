/* Interval kernels of the replay's dirty set (pipeline/replay/intervals.py, ADR 0373).
 *
 * The replay calls these once or twice per epoch on a few hundred intervals; in numpy each
 * is a dozen small array operations whose per-call cost dominates. Same results as the numpy
 * versions in intervals.py, which remain the fallback without this library (the tests compare
 * both). Half-open [start, end) gfn intervals, int64.
 */
#include <stdint.h>
#include <stdlib.h>

#define INTERVALS_ABI 1

int64_t intervals_abi(void) { return INTERVALS_ABI; }

/* First index i in sorted v[0..n) with v[i] > x (numpy searchsorted side="right"). */
static int64_t upper_bound(const int64_t *v, int64_t n, int64_t x) {
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (v[mid] <= x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* intersect(): every non-empty overlap of an interval of a (any order, may overlap) with the
 * sorted disjoint b, ordered by a index then position, with its a index. Writes at most
 * cap outputs and returns how many there are (the caller retries with more room if the
 * return value exceeds cap). */
int64_t intervals_intersect(const int64_t *a_s, const int64_t *a_e, int64_t na,
                            const int64_t *b_s, const int64_t *b_e, int64_t nb, int64_t *o_s,
                            int64_t *o_e, int64_t *o_a, int64_t cap) {
    int64_t n = 0;
    for (int64_t i = 0; i < na; i++) {
        int64_t s = a_s[i], e = a_e[i];
        for (int64_t j = upper_bound(b_e, nb, s); j < nb && b_s[j] < e; j++) {
            int64_t lo = s > b_s[j] ? s : b_s[j];
            int64_t hi = e < b_e[j] ? e : b_e[j];
            if (hi <= lo)
                continue;
            if (n < cap) {
                o_s[n] = lo;
                o_e[n] = hi;
                o_a[n] = i;
            }
            n++;
        }
    }
    return n;
}

typedef struct {
    int64_t s, e;
} span;

static int by_start(const void *x, const void *y) {
    const span *a = x, *b = y;
    return (a->s > b->s) - (a->s < b->s);
}

/* IntervalSet.subtract(): the sorted disjoint non-touching a minus the cuts (any order, may
 * overlap or be empty), written to o_s/o_e (room for na + nc intervals); returns the count,
 * or -1 if out of memory. The result is the canonical form (sorted, disjoint, non-touching),
 * as the numpy version's. */
int64_t intervals_subtract(const int64_t *a_s, const int64_t *a_e, int64_t na,
                           const int64_t *c_s, const int64_t *c_e, int64_t nc, int64_t *o_s,
                           int64_t *o_e) {
    span *cut = malloc((size_t)(nc > 0 ? nc : 1) * sizeof(span));
    if (cut == NULL)
        return -1;
    int64_t m = 0;
    for (int64_t k = 0; k < nc; k++)
        if (c_e[k] > c_s[k]) {
            cut[m].s = c_s[k];
            cut[m].e = c_e[k];
            m++;
        }
    qsort(cut, (size_t)m, sizeof(span), by_start);
    int64_t merged = 0; /* merge overlapping or touching cuts */
    for (int64_t k = 0; k < m; k++) {
        if (merged > 0 && cut[k].s <= cut[merged - 1].e) {
            if (cut[k].e > cut[merged - 1].e)
                cut[merged - 1].e = cut[k].e;
        } else {
            cut[merged++] = cut[k];
        }
    }
    int64_t n = 0, j = 0;
    for (int64_t i = 0; i < na; i++) {
        int64_t s = a_s[i], e = a_e[i], cur = s;
        while (j < merged && cut[j].e <= s)
            j++;
        for (int64_t k = j; k < merged && cut[k].s < e; k++) {
            if (cut[k].s > cur) {
                o_s[n] = cur;
                o_e[n] = cut[k].s;
                n++;
            }
            if (cut[k].e > cur)
                cur = cut[k].e;
        }
        if (cur < e) {
            o_s[n] = cur;
            o_e[n] = e;
            n++;
        }
    }
    free(cut);
    return n;
}
