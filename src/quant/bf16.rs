//! f32 → bfloat16 for the bf16 base format.

use half::bf16;

/// `x` rounded to bfloat16 (nearest, ties to even: what `tensor.to(torch.bfloat16)`
/// does). bf16 has f32's exponent range, so nothing overflows; NaN stays NaN.
/// A value that came from a bf16 checkpoint comes back unchanged.
pub fn to_bf16(x: &[f32]) -> Vec<bf16> {
    x.iter().map(|&v| bf16::from_f32(v)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_to_nearest_even_and_keeps_bf16_values() {
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even 1;
        // 1 + 3·2^-8 goes up to the even 1 + 2^-6.
        let got = to_bf16(&[1.0 + 2f32.powi(-8), 1.0 + 3.0 * 2f32.powi(-8), 1.0 + 2f32.powi(-8) + 2f32.powi(-20)]);
        let want = [1.0, 1.0 + 2f32.powi(-6), 1.0 + 2f32.powi(-7)];
        assert_eq!(got.iter().map(|h| h.to_f32()).collect::<Vec<_>>(), want);
        // f32's range, subnormals included, and values already in bf16 are kept.
        let kept = [f32::from_bits(0x7f7f_0000), f32::from_bits(0x8080_0000), f32::from_bits(0x0001_0000), -1.5];
        assert_eq!(to_bf16(&kept).iter().map(|h| h.to_f32()).collect::<Vec<_>>(), kept);
        assert!(to_bf16(&[f32::NAN])[0].is_nan());
        assert!(to_bf16(&[f32::INFINITY])[0].is_infinite());
    }
}
