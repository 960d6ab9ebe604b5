//! Helpers of the unit tests that check tensor code against hand-computed values.

use tch::{Kind, Tensor};

/// A float tensor `[rows, width]` from rows of equal width.
pub fn t(rows: &[&[f32]]) -> Tensor {
    let width = rows[0].len() as i64;
    let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_slice(&flat).view([rows.len() as i64, width])
}

/// Every value of a tensor, flattened, as f64.
pub fn values(t: &Tensor) -> Vec<f64> {
    Vec::try_from(t.to_kind(Kind::Double).view([-1])).unwrap()
}

/// Equal lengths, and each value within 1e-5 of the expected one.
pub fn assert_close(actual: &[f64], expected: &[f64]) {
    assert_eq!(actual.len(), expected.len(), "{actual:?} vs {expected:?}");
    for (a, e) in actual.iter().zip(expected) {
        assert!((a - e).abs() < 1e-5, "{actual:?} vs {expected:?}");
    }
}
