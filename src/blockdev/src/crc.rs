//! CRC-32C (Castagnoli), the checksum of every stored block, fast on the CPUs we run on.
//!
//! The `crc32c` crate uses the SSE 4.2 `crc32` instruction, three streams at a time: at best
//! 8 bytes per cycle, and on a 4 KiB block its stream merging and serial tail leave it nearer 5.
//! Verifying every block of a 1 MiB read was over half of that read's CPU (perf, 2026-11-26).
//! Where the CPU has AVX-512 with VPCLMULQDQ, this folds 256 bytes per round with carry-less
//! multiplies instead (four 512-bit accumulators; the constants are x^(2048±32) and x^(512±32)
//! mod P, bit-reflected, computed at compile time) and hands the folded 64 bytes plus the tail
//! to the `crc32` instruction, which yields exactly the CRC of the whole input: folding keeps
//! the message's residue mod P. Elsewhere, and for inputs under 256 bytes, it is the crate.
//!
//! It must return exactly what `crc32c::crc32c` returns for every input: checksums are on disk.

/// The CRC-32C polynomial with its x^32 term.
#[cfg(target_arch = "x86_64")]
const POLY: u64 = 0x1_1EDC_6F41;

/// x^n mod P, bit-reflected and shifted left by one: the form a reflected carry-less fold uses.
#[cfg(target_arch = "x86_64")]
const fn fold_constant(n: u32) -> u64 {
    let mut r: u64 = 1;
    let mut i = 0;
    while i < n {
        r <<= 1;
        if r & (1 << 32) != 0 {
            r ^= POLY;
        }
        i += 1;
    }
    ((r as u32).reverse_bits() as u64) << 1
}

/// Fold distances: four 512-bit accumulators (2048 bits) and one 512-bit register.
#[cfg(target_arch = "x86_64")]
const K2048: (u64, u64) = (fold_constant(2048 + 32), fold_constant(2048 - 32));
#[cfg(target_arch = "x86_64")]
const K512: (u64, u64) = (fold_constant(512 + 32), fold_constant(512 - 32));

/// Bytes per fold round (four 64-byte accumulators).
const ROUND: usize = 256;

/// The CRC-32C of `data` (same result as `crc32c::crc32c`).
pub fn crc32c(data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if data.len() >= ROUND && has_fold() {
        // SAFETY: `has_fold` checked at run time that the CPU has every feature `fold` enables.
        return unsafe { fold(data) };
    }
    ::crc32c::crc32c(data)
}

#[cfg(target_arch = "x86_64")]
fn has_fold() -> bool {
    // The standard library caches the detection: after the first call this is one load.
    std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("vpclmulqdq")
        && std::is_x86_feature_detected!("sse4.2")
}

/// # Safety
/// The CPU must have AVX-512F, VPCLMULQDQ and SSE 4.2; `data.len() >= ROUND`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,vpclmulqdq,sse4.2")]
unsafe fn fold(data: &[u8]) -> u32 {
    use std::arch::x86_64::*;
    debug_assert!(data.len() >= ROUND);
    let p = data.as_ptr();
    // SAFETY: every call loads 64 bytes at an `off` with `off + 64 <= data.len()` (the loop
    // bounds below); the load is unaligned.
    let load = |off: usize| unsafe { _mm512_loadu_si512(p.add(off).cast()) };
    let pair = |k: (u64, u64)| {
        let (hi, lo) = (k.0 as i64, k.1 as i64);
        _mm512_set_epi64(hi, lo, hi, lo, hi, lo, hi, lo)
    };
    // x = lo64 * k.0 ^ hi64 * k.1, per 128-bit lane, then xor `d` in.
    let step = |x: __m512i, k: __m512i, d: __m512i| {
        let a = _mm512_clmulepi64_epi128(x, k, 0x01);
        let b = _mm512_clmulepi64_epi128(x, k, 0x10);
        _mm512_ternarylogic_epi64(a, b, d, 0x96)
    };
    let mut acc = [load(0), load(64), load(128), load(192)];
    // The initial value (all ones, as the crate starts) goes into the first 4 bytes.
    acc[0] = _mm512_xor_si512(acc[0], _mm512_castsi128_si512(_mm_cvtsi32_si128(-1)));
    let k4 = pair(K2048);
    let mut off = ROUND;
    while off + ROUND <= data.len() {
        for (i, a) in acc.iter_mut().enumerate() {
            *a = step(*a, k4, load(off + 64 * i));
        }
        off += ROUND;
    }
    let k1 = pair(K512);
    let mut x = acc[0];
    for a in &acc[1..] {
        x = step(x, k1, *a);
    }
    let mut folded = [0u64; 8];
    // SAFETY: `folded` is 64 writable bytes; the store is unaligned.
    unsafe { _mm512_storeu_si512(folded.as_mut_ptr().cast(), x) };
    // The CRC register after the folded bytes, starting from zero (the initial value is in
    // the data already), then the crate continues over the tail from that register.
    let reg = folded
        .iter()
        .fold(0u64, |c, &q| _mm_crc32_u64(c, u64::from_le(q)));
    ::crc32c::crc32c_append(!(reg as u32), &data[off..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<u8> {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s as u8
            })
            .collect()
    }

    /// Every length around the fold's boundaries, at every start alignment mod 8, and the
    /// sizes the store checksums: the same value as the crate (on CPUs without the fold this
    /// compares the crate with itself, and says so).
    #[test]
    fn same_as_the_crate() {
        #[cfg(target_arch = "x86_64")]
        if !has_fold() {
            println!("skipped: this CPU has no AVX-512 VPCLMULQDQ (the crate is used as is)");
        }
        let d = data((1 << 20) + 300);
        let mut lens: Vec<usize> = (0..=1100).collect();
        lens.extend([4096, 8192, 65536 - 1, 65536, 1 << 20]);
        for &len in &lens {
            for start in 0..8 {
                let s = &d[start..start + len];
                assert_eq!(crc32c(s), ::crc32c::crc32c(s), "len {len} start {start}");
            }
        }
        // A single flipped bit anywhere in a block changes the checksum.
        let mut b = d[..4096].to_vec();
        let good = crc32c(&b);
        for bit in [0, 7, 8 * 100 + 3, 8 * 2048, 8 * 4095 + 7] {
            b[bit / 8] ^= 1 << (bit % 8);
            assert_ne!(crc32c(&b), good, "bit {bit}");
            b[bit / 8] ^= 1 << (bit % 8);
        }
        assert_eq!(crc32c(&[0u8; 4096]), ::crc32c::crc32c(&[0u8; 4096]));
    }
}
