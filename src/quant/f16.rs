//! f32 → IEEE half precision for the f16 base format.

use half::f16;

use super::QuantError;

/// `x` rounded to f16 (nearest, ties to even: what `tensor.half()` does).
/// A finite value past f16's range is an error rather than an infinity; NaN
/// and infinities pass through as themselves.
pub fn to_f16(x: &[f32]) -> Result<Vec<f16>, QuantError> {
    check_f16_range(x)?;
    Ok(x.iter().map(|&v| f16::from_f32(v)).collect())
}

/// Refuses the first finite value of `x` that would round to an f16 infinity
/// (|v| ≥ 65520, the midpoint past f16::MAX).
pub fn check_f16_range(x: &[f32]) -> Result<(), QuantError> {
    match x.iter().position(|v| v.is_finite() && v.abs() >= 65520.0) {
        Some(index) => Err(QuantError::F16Range { index, value: x[index] }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_to_nearest_even_and_refuses_overflow() {
        // 1 + 2^-11 lies halfway between 1 and 1 + 2^-10: ties go to the even 1.
        let got = to_f16(&[1.0 + 2f32.powi(-11), 1.0 + 3.0 * 2f32.powi(-11), -4e-8, 65504.0]).unwrap();
        let want = [1.0, 1.0 + 2.0 * 2f32.powi(-10), -2f32.powi(-24), 65504.0];
        assert_eq!(got.iter().map(|h| h.to_f32()).collect::<Vec<_>>(), want);
        assert_eq!(to_f16(&[0.5, -70000.0]), Err(QuantError::F16Range { index: 1, value: -70000.0 }));
        assert!(to_f16(&[f32::INFINITY]).unwrap()[0].is_infinite());
        // The last value that rounds down to f16::MAX, and the first that does not.
        assert_eq!(to_f16(&[65519.996]).unwrap()[0], f16::MAX);
        assert!(check_f16_range(&[65520.0]).is_err());
    }
}
