/* ftrace_scan.c: the compiled header + payload scanner of `tlbreplay ingest` (ADR 0110).
 *
 * scan_block() reads a block of ftrace text lines and fills per-line column buffers. It mirrors
 * the header cuts of pipeline/ingest/ftrace.py:_header_fast() (first '[', first ']' after it,
 * first ": ", the pid's dash, then the same checks on each piece) and matches each known
 * event's payload against small templates (literal text, numbers, character classes) built in
 * pipeline/ingest/fastscan.py from the event grammars. It only ever claims a line it is sure
 * of; every other line is marked so that Python hands it to the exact grammar. It never reads
 * outside [buf, buf + len) and never writes outside the given arrays (n_lines rows each).
 *
 * Build: gcc -O2 -shared -fPIC -Wall -Wextra -Werror -o pipeline/ingest/_ftrace_scan.so
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define ST_DEFER 0  /* not sure: the exact grammar decides */
#define ST_HEADER 1 /* header parsed; payload left to the per-event grammars */
#define ST_FULL 2   /* header and payload parsed by template tmpl[i] */

enum op {
    OP_END = 0,     /* the payload must end here: success */
    OP_LIT,         /* a: offset in lits, b: length */
    OP_UDEC,        /* a: slot; [0-9]+ as u64 */
    OP_SDEC,        /* a: slot; -?[0-9]+ as i64 */
    OP_HEX,         /* a: slot; [0-9a-fA-F]+ as u64 */
    OP_HEX0X,       /* a: slot; (?:0x)?[0-9a-fA-F]+ as u64 */
    OP_SPAN_BEGIN,  /* a: slot; remember the position */
    OP_SPAN_END,    /* a: slot; slot = offset in block, slot + 1 = length */
    OP_CLS,         /* a: set; exactly one char of the set */
    OP_CLSOPT,      /* a: set; zero or one char of the set */
    OP_CLSREP,      /* a: set, b: minimum count; as many chars of the set as possible */
    OP_UNTIL_FIRST, /* a: lit offset, b: length; >= 1 char up to the first occurrence */
    OP_UNTIL_LAST,  /* a: lit offset, b: length; >= 1 char up to the last occurrence */
    OP_LHEX         /* a: slot; [0-9a-f]+ as u64 (lower case only) */
};

/* Bumped whenever scan_block's arguments, the ops or the states change; fastscan.py refuses
   a library built from another version (a stale build falls back to polars, never crashes). */
#define SCAN_ABI 1

int scan_abi(void) { return SCAN_ABI; }

#define MAX_TS_SEC 9000000000LL
#define INT32_MAXV 2147483647LL

static int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

/* hex digit value + 1, 0 for a non-hex byte */
static const unsigned char HEX1[256] = {
    ['0'] = 1,  ['1'] = 2,  ['2'] = 3,  ['3'] = 4,  ['4'] = 5,  ['5'] = 6,  ['6'] = 7,
    ['7'] = 8,  ['8'] = 9,  ['9'] = 10, ['a'] = 11, ['b'] = 12, ['c'] = 13, ['d'] = 14,
    ['e'] = 15, ['f'] = 16, ['A'] = 11, ['B'] = 12, ['C'] = 13, ['D'] = 14, ['E'] = 15,
    ['F'] = 16,
};

static int hex_value(unsigned char c) { return (int)HEX1[c] - 1; }

static int same(const unsigned char *a, const unsigned char *b, long m)
{
    for (long j = 0; j < m; j++)
        if (a[j] != b[j])
            return 0;
    return 1;
}

/* First needle[0..m) in s[from..to), -1 if none; memchr finds each candidate first byte
   (the header's ": " cuts are ~75 bytes into a line: a byte loop was ~12 % of scan_block). */
static long find(const unsigned char *s, long from, long to, const unsigned char *needle, long m)
{
    long i = from;
    while (m > 0 && i + m <= to) {
        const unsigned char *q = memchr(s + i, needle[0], (size_t)(to - m + 1 - i));
        if (!q)
            return -1;
        i = (long)(q - s);
        if (same(s + i, needle, m))
            return i;
        i++;
    }
    return m > 0 || from > to ? -1 : from;
}

static long rfind(const unsigned char *s, long from, long to, const unsigned char *needle, long m)
{
    for (long i = to - m; i >= from; i--)
        if (s[i] == needle[0] && same(s + i, needle, m))
            return i;
    return -1;
}

/* Digits at *p as u64 (advances *p); 0 on overflow or no digit. */
static int read_udec(const unsigned char *s, long *p, long end, uint64_t *out)
{
    long i = *p;
    uint64_t v = 0;
    if (i >= end || !is_digit(s[i]))
        return 0;
    for (; i < end && is_digit(s[i]); i++) {
        uint64_t d = (uint64_t)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return 0;
        v = v * 10 + d;
    }
    *p = i;
    *out = v;
    return 1;
}

static int read_hex(const unsigned char *s, long *p, long end, int lower, uint64_t *out)
{
    long i = *p;
    uint64_t v = 0;
    long start = i;
    while (i < end && HEX1[s[i]] && !(lower && s[i] >= 'A' && s[i] <= 'F'))
        i++;
    if (i == start)
        return 0;
    while (start < i - 1 && s[start] == '0') /* leading zeros do not count */
        start++;
    if (i - start > 16)
        return 0;
    for (long j = start; j < i; j++)
        v = (v << 4) | (uint64_t)(HEX1[s[j]] - 1);
    *p = i;
    *out = v;
    return 1;
}

/* Match payload s[p..end) against one template; fills slots[k * stride] (slot k of the
   line). 1 on success. */
static int match_template(const unsigned char *s, long p, long end, const int32_t *ops,
                          const unsigned char *lits, const unsigned char *sets, int64_t *slots,
                          long stride)
{
    const long p0 = p; /* the payload's start: the split point is found from here */
    long span_at = 0;
    for (;; ops += 4) {
        int32_t a = ops[1], b = ops[2];
        uint64_t u;
        switch (ops[0]) {
        case OP_END:
            return p == end;
        case OP_LIT:
            if (end - p < b || !same(s + p, lits + a, b))
                return 0;
            p += b;
            break;
        case OP_UDEC:
            if (!read_udec(s, &p, end, &u))
                return 0;
            slots[a * stride] = (int64_t)u;
            break;
        case OP_SDEC: {
            int neg = p < end && s[p] == '-';
            long q = p + neg;
            if (!read_udec(s, &q, end, &u))
                return 0;
            if (u > (neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX))
                return 0;
            slots[a * stride] = neg ? (int64_t)(0 - u) : (int64_t)u;
            p = q;
            break;
        }
        case OP_HEX0X:
            if (end - p >= 3 && s[p] == '0' && s[p + 1] == 'x' && hex_value(s[p + 2]) >= 0)
                p += 2;
            /* fall through */
        case OP_HEX:
        case OP_LHEX:
            if (!read_hex(s, &p, end, ops[0] == OP_LHEX, &u))
                return 0;
            slots[a * stride] = (int64_t)u;
            break;
        case OP_SPAN_BEGIN:
            span_at = p;
            break;
        case OP_SPAN_END:
            slots[a * stride] = span_at;
            slots[(a + 1) * stride] = p - span_at;
            break;
        case OP_CLS:
            if (p >= end || !sets[a * 256 + s[p]])
                return 0;
            p++;
            break;
        case OP_CLSOPT:
            if (p < end && sets[a * 256 + s[p]])
                p++;
            break;
        case OP_CLSREP: {
            long q = p;
            while (q < end && sets[a * 256 + s[q]])
                q++;
            if (q - p < b)
                return 0;
            p = q;
            break;
        }
        case OP_UNTIL_FIRST:
        case OP_UNTIL_LAST: {
            /* UNTIL_FIRST cuts at the first occurrence in the whole payload, like the
               grammar's `split`; the text before it must be non-empty */
            long at = ops[0] == OP_UNTIL_FIRST ? find(s, p0, end, lits + a, b)
                                               : rfind(s, p + 1, end, lits + a, b);
            if (at <= p)
                return 0;
            p = at;
            break;
        }
        default:
            return 0;
        }
    }
}

static int is_blank(unsigned char c) { return c == ' ' || c == '\r' || c == 0 || c == '\n'; }

/* The metadata prefixes ftrace.py _META_PREFIX leaves to the exact grammar. */
static int meta_prefix(const unsigned char *s, long a, long b)
{
    long n = b - a;
    if (n >= 1 && s[a] == '#')
        return 1;
    if (n >= 11 && memcmp(s + a, "version = ", 10) == 0 && is_digit(s[a + 10]))
        return 1;
    if (n >= 4 && memcmp(s + a, "CPU", 3) == 0 && is_digit(s[a + 3]))
        return 1;
    if (n >= 1 && is_digit(s[a])) {
        long i = a;
        while (i < b && is_digit(s[i]))
            i++;
        if (b - i >= 14 && memcmp(s + i, " bytes in size", 14) == 0)
            return 1;
    }
    return 0;
}

/* 1 when every byte of s[a..e) is printable ASCII (0x20..0x7e); 8 bytes at a time. */
static int printable(const unsigned char *s, long a, long e)
{
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    long i = a;
    for (; i + 8 <= e; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        uint64_t del = w ^ (0x7f * ones); /* a zero byte where w has 0x7f */
        if ((w | ((w - 0x20 * ones) & ~w) | ((del - ones) & ~del)) & highs)
            return 0;
    }
    for (; i < e; i++)
        if (s[i] < 0x20 || s[i] >= 0x7f)
            return 0;
    return 1;
}

/* Parse the header of line s[a..e); fills the row on success. 1 when sure. */
static int scan_header(const unsigned char *s, long a, long e, int32_t *cpu, int32_t *pid,
                       int64_t *ts_ns, int32_t *comm_off, int32_t *comm_len, int32_t *flags_off,
                       int32_t *flags_len, int32_t *ev_off, int32_t *ev_len, int32_t *pl_off,
                       int32_t *pl_len)
{
    long lb, rb, k1, k2, i;
    if (!printable(s, a, e))
        return 0; /* control or non-ASCII: exact grammar */
    const unsigned char *q = memchr(s + a, '[', (size_t)(e - a));
    if (!q)
        return 0;
    lb = q - s;
    q = memchr(s + lb, ']', (size_t)(e - lb));
    if (!q)
        return 0;
    rb = q - s;
    /* k1 = the first ": " of the line, which must come after rb */
    k1 = find(s, a, e, (const unsigned char *)": ", 2);
    if (k1 <= rb)
        return 0;
    k2 = find(s, k1 + 2, e, (const unsigned char *)": ", 2);
    if (!(k1 + 2 < k2))
        return 0;
    /* head = s[a..lb) must end with -[0-9]{1,10} +; d = that dash */
    long t = lb;
    while (t > a && s[t - 1] == ' ')
        t--;
    if (t == lb)
        return 0;
    long dg = t;
    while (dg > a && is_digit(s[dg - 1]))
        dg--;
    if (t - dg < 1 || t - dg > 10 || dg <= a || s[dg - 1] != '-')
        return 0;
    long d = dg - 1;
    uint64_t v = 0;
    for (i = dg; i < t; i++)
        v = v * 10 + (uint64_t)(s[i] - '0');
    if (v > (uint64_t)INT32_MAXV)
        return 0;
    long c0 = a;
    while (c0 < d && s[c0] == ' ')
        c0++;
    if (c0 == d || meta_prefix(s, c0, d))
        return 0;
    /* cpu = s[lb+1..rb) : [0-9]{1,6} */
    if (rb - lb - 1 < 1 || rb - lb - 1 > 6)
        return 0;
    uint64_t cpuv = 0;
    for (i = lb + 1; i < rb; i++) {
        if (!is_digit(s[i]))
            return 0;
        cpuv = cpuv * 10 + (uint64_t)(s[i] - '0');
    }
    /* mid = s[rb+1..k1) : ^ +(?:[^ ]+ +)?[0-9]{1,12}\.[0-9]{1,9}$ */
    long m0 = rb + 1, m1 = k1;
    if (m0 >= m1 || s[m0] != ' ')
        return 0;
    long ls = m1 - 1; /* last space in mid */
    while (ls >= m0 && s[ls] != ' ')
        ls--;
    long dot = -1;
    for (i = ls + 1; i < m1; i++) {
        if (s[i] == '.') {
            if (dot >= 0)
                return 0;
            dot = i;
        } else if (!is_digit(s[i]))
            return 0;
    }
    if (dot < 0 || dot - (ls + 1) < 1 || dot - (ls + 1) > 12 || m1 - dot - 1 < 1 ||
        m1 - dot - 1 > 9)
        return 0;
    /* between m0 and ls: spaces, optionally one run of non-spaces, then spaces */
    long f0 = m0;
    while (f0 < ls && s[f0] == ' ')
        f0++;
    long f1 = f0;
    while (f1 < ls && s[f1] != ' ')
        f1++;
    for (i = f1; i < ls; i++)
        if (s[i] != ' ')
            return 0;
    uint64_t sec = 0, frac = 0;
    for (i = ls + 1; i < dot; i++)
        sec = sec * 10 + (uint64_t)(s[i] - '0');
    if (sec > (uint64_t)MAX_TS_SEC)
        return 0;
    for (i = dot + 1; i < dot + 10; i++)
        frac = frac * 10 + (uint64_t)(i < m1 ? s[i] - '0' : 0);
    /* event = s[k1+2..k2) : [^ :]+ */
    for (i = k1 + 2; i < k2; i++)
        if (s[i] == ' ' || s[i] == ':')
            return 0;
    long p0 = k2 + 2, p1 = e;
    while (p0 < p1 && is_blank(s[p0]))
        p0++;
    while (p1 > p0 && is_blank(s[p1 - 1]))
        p1--;
    *cpu = (int32_t)cpuv;
    *pid = (int32_t)v;
    *ts_ns = (int64_t)(sec * 1000000000ULL + frac);
    *comm_off = (int32_t)c0;
    *comm_len = (d - c0 == 5 && memcmp(s + c0, "<...>", 5) == 0) ? -1 : (int32_t)(d - c0);
    *flags_off = (int32_t)f0;
    *flags_len = (int32_t)(f1 - f0);
    *ev_off = (int32_t)(k1 + 2);
    *ev_len = (int32_t)(k2 - k1 - 2);
    *pl_off = (int32_t)p0;
    *pl_len = (int32_t)(p1 - p0);
    return 1;
}

/*
 * Scan buf[0..len) (at most n_lines lines; the last may lack its newline); *consumed is
 * set to the number of bytes scanned (< len when the arrays were too short).
 * names: the known event names, concatenated; name_off[n_names + 1] their bounds.
 * ev_tmpl[n_names + 1]: templates of event k are tmpl_op[ev_tmpl[k]..ev_tmpl[k+1]) (op index
 * of each template's first op, 4 int32 per op). slots: n_slots x n_lines int64 (slot-major).
 * Returns the number of lines scanned.
 */
long scan_block(const unsigned char *buf, long len, long n_lines, int32_t n_names,
                const unsigned char *names, const int32_t *name_off, const int32_t *ev_tmpl,
                const int32_t *tmpl_op, const int32_t *ops, const unsigned char *lits,
                const unsigned char *sets, int64_t *line_start,
                int64_t *line_end, int8_t *status, int64_t *ts_ns, int32_t *cpu, int32_t *pid,
                int32_t *comm_off, int32_t *comm_len, int32_t *flags_off, int32_t *flags_len,
                int32_t *ev_off, int32_t *ev_len, int32_t *pl_off, int32_t *pl_len,
                int32_t *event_id, int32_t *tmpl, int64_t *slots, long *consumed)
{
    long pos = 0, r = 0;
    while (pos < len && r < n_lines) {
        const unsigned char *nl = memchr(buf + pos, '\n', (size_t)(len - pos));
        long e = nl ? (long)(nl - buf) : len;
        line_start[r] = pos;
        line_end[r] = e;
        status[r] = ST_DEFER;
        event_id[r] = -1;
        tmpl[r] = -1;
        if (scan_header(buf, pos, e, &cpu[r], &pid[r], &ts_ns[r], &comm_off[r], &comm_len[r],
                        &flags_off[r], &flags_len[r], &ev_off[r], &ev_len[r], &pl_off[r],
                        &pl_len[r])) {
            status[r] = ST_HEADER;
            const unsigned char *ev = buf + ev_off[r];
            for (int32_t k = 0; k < n_names; k++) {
                int32_t m = name_off[k + 1] - name_off[k];
                if (m == ev_len[r] && names[name_off[k]] == ev[0] &&
                    memcmp(names + name_off[k], ev, (size_t)m) == 0) {
                    event_id[r] = k;
                    break;
                }
            }
            if (event_id[r] >= 0) {
                int32_t k = event_id[r];
                int64_t *row = slots + r;
                for (int32_t t = ev_tmpl[k]; t < ev_tmpl[k + 1]; t++) {
                    if (match_template(buf, pl_off[r], (long)pl_off[r] + pl_len[r],
                                       ops + (size_t)tmpl_op[t] * 4, lits, sets, row, n_lines)) {
                        status[r] = ST_FULL;
                        tmpl[r] = t;
                        break;
                    }
                }
            }
        }
        r++;
        pos = e + 1;
    }
    *consumed = pos < len ? pos : len;
    return r;
}

/*
 * Copy the strings buf[off[i] .. off[i] + lens[i]) one after another into out; offsets[0..n]
 * (computed by the caller from lens) say where each goes. Returns 0, or -1 (nothing copied
 * past that string) when a string is not inside buf.
 */
long gather_strings(const unsigned char *buf, long len, const int64_t *off, const int64_t *lens,
                    long n, const int64_t *offsets, unsigned char *out)
{
    for (long i = 0; i < n; i++) {
        if (off[i] < 0 || lens[i] < 0 || off[i] > len || lens[i] > len - off[i])
            return -1;
        memcpy(out + offsets[i], buf + off[i], (size_t)lens[i]);
    }
    return 0;
}
