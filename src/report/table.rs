//! A plain table (header, rows of cells, some marked best), rendered by both the HTML page and
//! summary.md, so that the two always show the same numbers.

#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub headers: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    pub text: String,
    /// The best value of its column.
    pub best: bool,
}

impl Cell {
    pub fn text(text: impl Into<String>) -> Cell {
        Cell { text: text.into(), best: false }
    }
}

/// Which way a metric is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Higher,
    Lower,
}

/// Index of the best of `values` (ties: the first), if the direction is known and the values
/// are not all equal (then none is better than another).
pub fn best_index(values: &[Option<f64>], direction: Option<Direction>) -> Option<usize> {
    let direction = direction?;
    let present: Vec<f64> = values.iter().flatten().copied().collect();
    if present.windows(2).all(|pair| pair[0] == pair[1]) {
        return None;
    }
    values
        .iter()
        .enumerate()
        .filter_map(|(index, value)| value.map(|v| (index, v)))
        .reduce(|best, candidate| {
            let better = match direction {
                Direction::Higher => candidate.1 > best.1,
                Direction::Lower => candidate.1 < best.1,
            };
            if better {
                candidate
            } else {
                best
            }
        })
        .map(|(index, _)| index)
}

/// A figure with 4 significant digits, without exponent notation for ordinary magnitudes.
pub fn format_number(value: f64) -> String {
    if value == 0.0 {
        return "0".into();
    }
    let magnitude = value.abs().log10().floor() as i32;
    if !(-3..6).contains(&magnitude) {
        return format!("{value:.3e}");
    }
    let decimals = (3 - magnitude).max(0) as usize;
    format!("{value:.decimals$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directions_and_best() {
        let (lower, higher) = (Some(Direction::Lower), Some(Direction::Higher));
        assert_eq!(best_index(&[Some(1.0), None, Some(0.5)], lower), Some(2));
        assert_eq!(best_index(&[Some(1.0), None, Some(0.5)], higher), Some(0));
        assert_eq!(best_index(&[None, None], higher), None);
        assert_eq!(best_index(&[Some(1.0)], None), None);
        assert_eq!(best_index(&[Some(1.0), Some(1.0), None], lower), None, "equal: none is best");
        assert_eq!(best_index(&[Some(2.0), Some(1.0), Some(1.0)], lower), Some(1));
    }

    #[test]
    fn numbers_keep_four_significant_digits() {
        assert_eq!(format_number(1.23456), "1.235");
        assert_eq!(format_number(0.012345), "0.01235");
        assert_eq!(format_number(123.456), "123.5");
        assert_eq!(format_number(-0.5), "-0.5000");
        assert_eq!(format_number(1.5e-7), "1.500e-7");
        assert_eq!(format_number(0.0), "0");
    }
}
