//! Kubernetes resource quantities (`"10"`, `"500m"`, `"1.5k"`, `"2Ki"`), as
//! milli-units: the precision the HPA computes in.

/// Parses a quantity into milli-units. Accepts a decimal number with an
/// optional SI (`m`, `k`, `M`, `G`, `T`) or binary (`Ki`, `Mi`, `Gi`, `Ti`)
/// suffix; rejects exponents, signs other than a leading `-`, and overflow.
pub fn parse_quantity_milli(s: &str) -> Result<i64, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty quantity".into());
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let mult: f64 = match suffix {
        "" => 1e3,
        "m" => 1.0,
        "k" => 1e6,
        "M" => 1e9,
        "G" => 1e12,
        "T" => 1e15,
        "Ki" => 1024.0 * 1e3,
        "Mi" => 1024.0 * 1024.0 * 1e3,
        "Gi" => 1024.0 * 1024.0 * 1024.0 * 1e3,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1e3,
        other => return Err(format!("quantity {s:?}: unsupported suffix {other:?}")),
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("quantity {s:?}: {num:?} is not a decimal number"))?;
    let milli = (value * mult).ceil();
    if !milli.is_finite() || milli.abs() > 9.0e18 {
        return Err(format!("quantity {s:?} is out of range"));
    }
    Ok(milli as i64)
}

#[cfg(test)]
mod tests {
    use super::parse_quantity_milli as q;

    #[test]
    fn parses_si_and_binary_suffixes() {
        assert_eq!(q("10"), Ok(10_000));
        assert_eq!(q("500m"), Ok(500));
        assert_eq!(q("1.5k"), Ok(1_500_000));
        assert_eq!(q("1Ki"), Ok(1_024_000));
        assert_eq!(q("0.1"), Ok(100));
        assert!(q("").is_err());
        assert!(q("10x").is_err());
        assert!(q("1e3").is_err());
        assert!(q("abc").is_err());
    }
}
