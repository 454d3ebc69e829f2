//! Money as the payment provider counts it: prices in a currency's smallest
//! unit (cents), computed with integers only, and the discount a package
//! gives. Nothing here touches the database or the network.

/// Stripe's zero-decimal currencies: amounts are whole units.
const ZERO_DECIMAL: [&str; 16] = [
    "BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF", "UGX", "VND", "VUV",
    "XAF", "XOF", "XPF",
];
/// Stripe's three-decimal currencies.
const THREE_DECIMAL: [&str; 5] = ["BHD", "JOD", "KWD", "OMR", "TND"];

/// A decimal price (`19.99`, as PostgreSQL prints a `DECIMAL`) in the
/// currency's smallest unit (`1999` cents), computed exactly with integers.
/// Refuses signs, exponents, garbage, unknown currency codes and prices with
/// more (non-zero) decimals than the currency has.
pub fn minor_units(price: &str, currency: &str) -> Result<i64, String> {
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(format!("`{currency}` is not an ISO 4217 currency code"));
    }
    let upper = currency.to_ascii_uppercase();
    let exponent = exponent(currency);
    let (whole, fraction) = price.split_once('.').unwrap_or((price, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || whole.len() > 12 || !digits(whole) || !digits(fraction) {
        return Err(format!("`{price}` is not a price"));
    }
    let (kept, dropped) = fraction.split_at(fraction.len().min(exponent));
    if dropped.bytes().any(|b| b != b'0') {
        return Err(format!("`{price}` has more decimals than {upper} allows"));
    }
    let mut units: i64 = whole
        .parse()
        .map_err(|_| format!("`{price}` is not a price"))?;
    for position in 0..exponent {
        let digit = kept
            .as_bytes()
            .get(position)
            .map_or(0, |b| i64::from(b - b'0'));
        units = units
            .checked_mul(10)
            .and_then(|u| u.checked_add(digit))
            .ok_or_else(|| format!("`{price}` is too large"))?;
    }
    Ok(units)
}

/// Decimals of a currency's smallest unit, as Stripe counts them: 0 for
/// zero-decimal currencies (`JPY`), 3 for three-decimal ones (`KWD`), else 2.
pub fn exponent(currency: &str) -> usize {
    let upper = currency.to_ascii_uppercase();
    if ZERO_DECIMAL.contains(&upper.as_str()) {
        0
    } else if THREE_DECIMAL.contains(&upper.as_str()) {
        3
    } else {
        2
    }
}

/// `units` of the currency's smallest unit as a decimal price (`1699` USD is
/// `16.99`, `1500` JPY is `1500`, `1250` KWD is `1.250`).
pub fn decimal(units: i64, currency: &str) -> String {
    let exponent = exponent(currency);
    if exponent == 0 {
        return units.to_string();
    }
    let scale = 10_i64.pow(exponent as u32);
    format!(
        "{}.{:0width$}",
        units / scale,
        units % scale,
        width = exponent
    )
}

/// The price after a discount of `percentage` (0 to 100), in the smallest
/// unit, rounded down: the buyer never pays more than the stated discount
/// allows. Stored prices have two decimals (`DECIMAL(10,2)`), so in a
/// three-decimal currency the result is rounded down to a whole hundredth.
pub fn discounted(list_units: i64, percentage: i32, currency: &str) -> Result<i64, String> {
    if !(0..=100).contains(&percentage) {
        return Err(format!(
            "a discount of {percentage}% is not one from 0 to 100"
        ));
    }
    let kept = i128::from(list_units) * i128::from(100 - percentage) / 100;
    let mut units = i64::try_from(kept).map_err(|_| "the price is too large".to_string())?;
    if exponent(currency) == 3 {
        units -= units % 10;
    }
    Ok(units)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_convert_to_minor_units_exactly() {
        assert_eq!(minor_units("19.99", "USD"), Ok(1999));
        assert_eq!(minor_units("19.99", "usd"), Ok(1999));
        assert_eq!(minor_units("0.29", "USD"), Ok(29)); // 0.29 * 100 is 28.999... in f64
        assert_eq!(minor_units("4.9", "EUR"), Ok(490));
        assert_eq!(minor_units("5", "USD"), Ok(500));
        assert_eq!(minor_units("89.99", "USD"), Ok(8999));
        assert_eq!(minor_units("99999999.99", "USD"), Ok(9_999_999_999));
        assert_eq!(minor_units("1500.00", "JPY"), Ok(1500));
        assert!(minor_units("1500.50", "JPY").is_err());
        assert_eq!(minor_units("1.25", "KWD"), Ok(1250));
        for bad in ["", ".5", "-1.00", "+1", "1e3", "1.2.3", " 1", "1,00", "１"] {
            assert!(minor_units(bad, "USD").is_err(), "{bad}");
        }
        assert!(minor_units("1.00", "US").is_err());
        assert!(minor_units("1.00", "U$D").is_err());
    }

    #[test]
    fn amounts_print_as_the_currency_writes_them() {
        assert_eq!(decimal(1699, "USD"), "16.99");
        assert_eq!(decimal(5, "usd"), "0.05");
        assert_eq!(decimal(1500, "JPY"), "1500");
        assert_eq!(decimal(1250, "KWD"), "1.250");
        for (price, currency) in [("19.99", "USD"), ("0.01", "EUR"), ("1500", "JPY")] {
            let units = minor_units(price, currency).unwrap();
            assert_eq!(minor_units(&decimal(units, currency), currency), Ok(units));
        }
    }

    #[test]
    fn discounts_round_down_in_whole_smallest_units() {
        assert_eq!(discounted(1999, 0, "USD"), Ok(1999));
        assert_eq!(discounted(1999, 15, "USD"), Ok(1699)); // 1699.15
        assert_eq!(discounted(1999, 50, "USD"), Ok(999)); // 999.5
        assert_eq!(discounted(1999, 100, "USD"), Ok(0));
        assert_eq!(discounted(1500, 33, "JPY"), Ok(1005));
        assert_eq!(discounted(1990, 15, "KWD"), Ok(1690)); // 1691.5, to a whole hundredth
        assert!(discounted(1999, 101, "USD").is_err());
        assert!(discounted(1999, -1, "USD").is_err());
        assert_eq!(discounted(9_999_999_999, 1, "USD"), Ok(9_899_999_999));
    }
}
