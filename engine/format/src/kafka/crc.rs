//! CRC32C of a concatenation from the CRCs of its parts (zlib's `crc32_combine`), so that
//! wrapping a Kafka batch does not read its bytes twice.

/// The CRC32C polynomial, bit-reflected (bit 31 is x^0).
const CRC32C_POLY: u32 = 0x82F6_3B78;

/// `a * b` modulo the CRC32C polynomial (zlib's `multmodp`); `a` must not be 0.
const fn mul_mod_p(a: u32, mut b: u32) -> u32 {
    let mut m: u32 = 1 << 31;
    let mut p: u32 = 0;
    loop {
        if a & m != 0 {
            p ^= b;
            if a & (m - 1) == 0 {
                return p;
            }
        }
        m >>= 1;
        b = if b & 1 != 0 {
            (b >> 1) ^ CRC32C_POLY
        } else {
            b >> 1
        };
    }
}

/// `x^(2^n)` modulo the polynomial, n = 0..32.
const X2N: [u32; 32] = {
    let mut t = [0u32; 32];
    let mut p: u32 = 1 << 30; // x^1
    t[0] = p;
    let mut n = 1;
    while n < 32 {
        p = mul_mod_p(p, p);
        t[n] = p;
        n += 1;
    }
    t
};

/// CRC32C of `A ++ B` from CRC32C(A), CRC32C(B) and B's length: zlib's `crc32_combine`
/// (multiply by `x^(8 * len_b)` with a table of powers: about 20 32-bit products for a 64 KiB
/// batch). The `crc32c` crate's `crc32c_combine` squares 32x32 matrices per length bit and
/// costs more than a CRC pass over 64 KiB.
pub fn crc32c_combine(crc_a: u32, crc_b: u32, len_b: usize) -> u32 {
    let mut p: u32 = 1 << 31; // x^0
    let (mut n, mut k) = (len_b, 3usize); // x^(8n): start at x^(2^3)
    while n != 0 {
        if n & 1 != 0 {
            p = mul_mod_p(X2N[k & 31], p);
        }
        n >>= 1;
        k += 1;
    }
    mul_mod_p(p, crc_a) ^ crc_b
}
