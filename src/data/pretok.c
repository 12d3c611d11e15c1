/* Pre-tokenizers: the GPT-2 split pattern
 *   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * written by hand over UTF-8, the Metaspace split (a chunk starts at every
 * space) and no split; plus GPT-2's byte <-> unicode map.
 *
 * Character classes are exact for ASCII. Outside ASCII a compact table
 * lists whitespace, numbers and punctuation/symbols/marks of the common
 * blocks; every other code point counts as a letter. Invalid UTF-8 bytes
 * are single "other" characters. */
#include "internal.h"

#include <string.h>

typedef struct {
    uint32_t lo, hi;
    uint8_t cls;
} cp_range;

/* Sorted, non-overlapping ranges of non-ASCII code points that are not letters. */
static const cp_range cp_table[] = {
    {0x0080, 0x0084, ML_CC_OTHER},   {0x0085, 0x0085, ML_CC_SPACE},   {0x0086, 0x009F, ML_CC_OTHER},
    {0x00A0, 0x00A0, ML_CC_SPACE},   {0x00A1, 0x00A9, ML_CC_OTHER},   {0x00AB, 0x00B1, ML_CC_OTHER},
    {0x00B2, 0x00B3, ML_CC_NUMBER},  {0x00B4, 0x00B4, ML_CC_OTHER},   {0x00B6, 0x00B8, ML_CC_OTHER},
    {0x00B9, 0x00B9, ML_CC_NUMBER},  {0x00BB, 0x00BB, ML_CC_OTHER},   {0x00BC, 0x00BE, ML_CC_NUMBER},
    {0x00BF, 0x00BF, ML_CC_OTHER},   {0x00D7, 0x00D7, ML_CC_OTHER},   {0x00F7, 0x00F7, ML_CC_OTHER},
    {0x02C2, 0x02C5, ML_CC_OTHER},   {0x02D2, 0x02DF, ML_CC_OTHER},   {0x02E5, 0x02EB, ML_CC_OTHER},
    {0x0300, 0x036F, ML_CC_OTHER},   {0x037E, 0x037E, ML_CC_OTHER},   {0x0387, 0x0387, ML_CC_OTHER},
    {0x0483, 0x0489, ML_CC_OTHER},   {0x055A, 0x055F, ML_CC_OTHER},   {0x0589, 0x058A, ML_CC_OTHER},
    {0x0591, 0x05C7, ML_CC_OTHER},   {0x0600, 0x060F, ML_CC_OTHER},   {0x0610, 0x061A, ML_CC_OTHER},
    {0x061B, 0x061F, ML_CC_OTHER},   {0x064B, 0x065F, ML_CC_OTHER},   {0x0660, 0x0669, ML_CC_NUMBER},
    {0x066A, 0x066D, ML_CC_OTHER},   {0x06D4, 0x06D4, ML_CC_OTHER},   {0x06F0, 0x06F9, ML_CC_NUMBER},
    {0x0900, 0x0903, ML_CC_OTHER},   {0x093A, 0x094F, ML_CC_OTHER},   {0x0964, 0x0965, ML_CC_OTHER},
    {0x0966, 0x096F, ML_CC_NUMBER},  {0x0E31, 0x0E31, ML_CC_OTHER},   {0x0E34, 0x0E3A, ML_CC_OTHER},
    {0x0E47, 0x0E4F, ML_CC_OTHER},   {0x0E50, 0x0E59, ML_CC_NUMBER},  {0x1680, 0x1680, ML_CC_SPACE},
    {0x2000, 0x200A, ML_CC_SPACE},   {0x200B, 0x2027, ML_CC_OTHER},   {0x2028, 0x2029, ML_CC_SPACE},
    {0x202A, 0x202E, ML_CC_OTHER},   {0x202F, 0x202F, ML_CC_SPACE},   {0x2030, 0x205E, ML_CC_OTHER},
    {0x205F, 0x205F, ML_CC_SPACE},   {0x2060, 0x206F, ML_CC_OTHER},   {0x2070, 0x2070, ML_CC_NUMBER},
    {0x2074, 0x2079, ML_CC_NUMBER},  {0x207A, 0x207E, ML_CC_OTHER},   {0x2080, 0x2089, ML_CC_NUMBER},
    {0x208A, 0x208E, ML_CC_OTHER},   {0x20A0, 0x20FF, ML_CC_OTHER},   {0x2100, 0x2101, ML_CC_OTHER},
    {0x2103, 0x2106, ML_CC_OTHER},   {0x2108, 0x2109, ML_CC_OTHER},   {0x2114, 0x2114, ML_CC_OTHER},
    {0x2116, 0x2118, ML_CC_OTHER},   {0x211E, 0x2123, ML_CC_OTHER},   {0x2125, 0x2125, ML_CC_OTHER},
    {0x2127, 0x2127, ML_CC_OTHER},   {0x2129, 0x2129, ML_CC_OTHER},   {0x212E, 0x212E, ML_CC_OTHER},
    {0x213A, 0x213B, ML_CC_OTHER},   {0x2140, 0x2144, ML_CC_OTHER},   {0x214A, 0x214D, ML_CC_OTHER},
    {0x214F, 0x214F, ML_CC_OTHER},   {0x2150, 0x2182, ML_CC_NUMBER},  {0x2185, 0x2189, ML_CC_NUMBER},
    {0x218A, 0x245F, ML_CC_OTHER},   {0x2460, 0x249B, ML_CC_NUMBER},  {0x249C, 0x24E9, ML_CC_OTHER},
    {0x24EA, 0x24FF, ML_CC_NUMBER},  {0x2500, 0x2775, ML_CC_OTHER},   {0x2776, 0x2793, ML_CC_NUMBER},
    {0x2794, 0x2BFF, ML_CC_OTHER},   {0x2CF9, 0x2CFF, ML_CC_OTHER},   {0x2E00, 0x2E7F, ML_CC_OTHER},
    {0x2E80, 0x2FFF, ML_CC_OTHER},   {0x3000, 0x3000, ML_CC_SPACE},   {0x3001, 0x3004, ML_CC_OTHER},
    {0x3007, 0x3007, ML_CC_NUMBER},  {0x3008, 0x3020, ML_CC_OTHER},   {0x3021, 0x3029, ML_CC_NUMBER},
    {0x302A, 0x3030, ML_CC_OTHER},   {0x3036, 0x3037, ML_CC_OTHER},   {0x3038, 0x303A, ML_CC_NUMBER},
    {0x303D, 0x303F, ML_CC_OTHER},   {0x3099, 0x309C, ML_CC_OTHER},   {0x30A0, 0x30A0, ML_CC_OTHER},
    {0x30FB, 0x30FB, ML_CC_OTHER},   {0x3190, 0x319F, ML_CC_OTHER},   {0x31C0, 0x31EF, ML_CC_OTHER},
    {0x3200, 0x33FF, ML_CC_OTHER},   {0x4DC0, 0x4DFF, ML_CC_OTHER},   {0xA490, 0xA4CF, ML_CC_OTHER},
    {0xD800, 0xF8FF, ML_CC_OTHER},   {0xFD3E, 0xFD3F, ML_CC_OTHER},   {0xFE00, 0xFE6F, ML_CC_OTHER},
    {0xFEFF, 0xFEFF, ML_CC_OTHER},   {0xFF01, 0xFF0F, ML_CC_OTHER},   {0xFF10, 0xFF19, ML_CC_NUMBER},
    {0xFF1A, 0xFF20, ML_CC_OTHER},   {0xFF3B, 0xFF40, ML_CC_OTHER},   {0xFF5B, 0xFF65, ML_CC_OTHER},
    {0xFFE0, 0xFFFF, ML_CC_OTHER},   {0x10100, 0x1013F, ML_CC_OTHER}, {0x1D000, 0x1D24F, ML_CC_OTHER},
    {0x1D7CE, 0x1D7FF, ML_CC_NUMBER},{0x1F000, 0x1FAFF, ML_CC_OTHER}, {0xE0000, 0x10FFFF, ML_CC_OTHER},
};

static uint8_t ascii_class[128];
static int ascii_ready;

static void init_ascii(void) {
    for (int c = 0; c < 128; c++) {
        uint8_t k = ML_CC_OTHER;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) k = ML_CC_LETTER;
        else if (c >= '0' && c <= '9') k = ML_CC_NUMBER;
        else if (c == ' ' || (c >= 9 && c <= 13)) k = ML_CC_SPACE;
        ascii_class[c] = k;
    }
    ascii_ready = 1;
}

int ml_char_class(const unsigned char *s, size_t n, size_t *adv) {
    if (s[0] < 0x80) {
        *adv = 1;
        if (!ascii_ready) init_ascii();
        return ascii_class[s[0]];
    }
    unsigned c = s[0];
    size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 0;
    if (need == 0 || need > n || c > 0xF4) {
        *adv = 1;
        return ML_CC_OTHER;
    }
    uint32_t cp = c & (0x7F >> need);
    for (size_t i = 1; i < need; i++) {
        if ((s[i] & 0xC0) != 0x80) {
            *adv = 1;
            return ML_CC_OTHER;
        }
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    static const uint32_t minv[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < minv[need] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
        *adv = 1;
        return ML_CC_OTHER;
    }
    *adv = need;
    size_t lo = 0, hi = sizeof cp_table / sizeof cp_table[0];
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp_table[mid].hi < cp) lo = mid + 1;
        else hi = mid;
    }
    if (lo < sizeof cp_table / sizeof cp_table[0] && cp_table[lo].lo <= cp) return cp_table[lo].cls;
    return ML_CC_LETTER;
}

/* Length of the contraction at s ('s 't 're 've 'm 'll 'd), 0 if none. */
static size_t contraction(const char *s, size_t n) {
    if (n < 2 || s[0] != '\'') return 0;
    char a = s[1];
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    if (n >= 3) {
        char b = s[2];
        if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
    }
    return 0;
}

/* Length of the GPT-2 chunk starting at s. */
static size_t gpt2_chunk(const unsigned char *s, size_t n) {
    size_t k = contraction((const char *)s, n);
    if (k) return k;
    size_t adv, i = 0;
    int cls = ml_char_class(s, n, &adv);
    if (s[0] == ' ' && n > 1) { /* " ?X+" with X the class of the next char */
        size_t adv2;
        int c2 = ml_char_class(s + 1, n - 1, &adv2);
        if (c2 != ML_CC_SPACE) {
            cls = c2;
            i = 1;
        }
    }
    if (cls != ML_CC_SPACE) {
        while (i < n) {
            int c = ml_char_class(s + i, n - i, &adv);
            if (c != cls) break;
            i += adv;
        }
        return i;
    }
    /* whitespace run; \s+(?!\S) leaves the last space to the next chunk */
    size_t last = 0;
    i = 0;
    while (i < n) {
        int c = ml_char_class(s + i, n - i, &adv);
        if (c != ML_CC_SPACE) break;
        last = i;
        i += adv;
    }
    if (i < n && last > 0) return last; /* followed by non-space: drop the last char */
    return i;                           /* run of one, or at end of text */
}

int ml_pretokenize(ml_pretok mode, const char *text, size_t len, ml_chunk_fn fn, void *ctx) {
    const unsigned char *s = (const unsigned char *)text;
    if (mode == ML_PRETOK_NONE) {
        if (len) ML_CHECK(fn(ctx, text, len));
        return ML_OK;
    }
    size_t i = 0;
    while (i < len) {
        size_t k;
        if (mode == ML_PRETOK_GPT2) {
            k = gpt2_chunk(s + i, len - i);
        } else { /* METASPACE: up to (not including) the next space after position 0 */
            const char *p = memchr(text + i + 1, ' ', len - i - 1);
            k = p ? (size_t)(p - (text + i)) : len - i;
        }
        ML_CHECK(fn(ctx, text + i, k));
        i += k;
    }
    return ML_OK;
}

void ml_gpt2_byte_map(uint32_t cp_of_byte[256]) {
    int n = 0;
    for (int b = 0; b < 256; b++) {
        if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF))
            cp_of_byte[b] = (uint32_t)b;
        else
            cp_of_byte[b] = 256u + (uint32_t)n++;
    }
}

int ml_utf8_put(uint32_t cp, char *out) {
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}
