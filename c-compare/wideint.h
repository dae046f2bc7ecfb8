/*
 * wideint.h - n squared and n cubed, exactly, for any 64-bit n.
 *
 * Shared by square.c and cube_pool.c. mproc's `square` computes in i128, so
 * it prints the right square for every i64; standard C has no integer type
 * that wide (|INT64_MIN| cubed is 2^189), so the C twins multiply in 32-bit
 * limbs instead. Nothing here allocates or fails.
 *
 * Not a program: the Makefile builds only the .c files in this directory.
 */
#ifndef MPROC_WIDEINT_H
#define MPROC_WIDEINT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* 6 x 32 = 192 bits: enough for |n|^3 <= 2^189. */
#define WIDE_LIMBS 6
/* 2^189 has 57 decimal digits; plus a sign and the NUL. */
#define WIDE_DEC_LEN 64

struct wide {
    uint32_t limb[WIDE_LIMBS]; /* magnitude, least significant limb first */
    bool negative;
};

/*
 * w *= m, schoolbook style. Each partial product plus carry fits in 64 bits:
 * (2^32-1)^2 + 2(2^32-1) = 2^64-1. Bits beyond 192 would be dropped, but the
 * callers never multiply more than three 64-bit factors.
 */
static inline void wide_mul_u64(struct wide *w, uint64_t m)
{
    const uint32_t factor[2] = { (uint32_t)m, (uint32_t)(m >> 32) };
    uint32_t out[WIDE_LIMBS] = { 0 };

    for (int j = 0; j < 2; j++) {
        uint64_t carry = 0;
        for (int i = 0; i + j < WIDE_LIMBS; i++) {
            uint64_t t = (uint64_t)w->limb[i] * factor[j] + out[i + j] + carry;
            out[i + j] = (uint32_t)t;
            carry = t >> 32;
        }
    }
    for (int i = 0; i < WIDE_LIMBS; i++)
        w->limb[i] = out[i];
}

/* n to the power k, for k <= 3. */
static inline struct wide wide_power(int64_t n, unsigned k)
{
    /* Negate in unsigned arithmetic: -INT64_MIN does not fit in int64_t. */
    uint64_t magnitude = n < 0 ? (uint64_t)0 - (uint64_t)n : (uint64_t)n;
    struct wide w = { .limb = { 1 }, .negative = n < 0 && k % 2 == 1 };

    for (unsigned i = 0; i < k; i++)
        wide_mul_u64(&w, magnitude);
    return w;
}

/* Writes w in decimal to buf, which must hold WIDE_DEC_LEN bytes. */
static inline void wide_format(const struct wide *w, char buf[WIDE_DEC_LEN])
{
    uint32_t limb[WIDE_LIMBS];
    char digits[WIDE_DEC_LEN];
    size_t ndigits = 0;
    bool nonzero;

    for (int i = 0; i < WIDE_LIMBS; i++)
        limb[i] = w->limb[i];

    /* Divide by 10 from the top limb down until the quotient is zero. */
    do {
        uint64_t rem = 0;
        nonzero = false;
        for (int i = WIDE_LIMBS - 1; i >= 0; i--) {
            uint64_t cur = (rem << 32) | limb[i];
            limb[i] = (uint32_t)(cur / 10);
            rem = cur % 10;
            nonzero = nonzero || limb[i] != 0;
        }
        digits[ndigits++] = (char)('0' + rem);
    } while (nonzero);

    size_t pos = 0;
    if (w->negative)
        buf[pos++] = '-';
    while (ndigits > 0)
        buf[pos++] = digits[--ndigits];
    buf[pos] = '\0';
}

#endif /* MPROC_WIDEINT_H */
