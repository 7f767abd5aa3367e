//! Human-readable sizes and rates: parsing `64M`, `1.5GiB`, `4096`, and
//! printing `1.00 GiB`, `838 MB/s`.

/// Parse a size: a number with an optional binary suffix (`K`, `M`, `G`, `T`,
/// also `KiB`.. and `KB`.. which mean the same powers of 1024; a trailing `B`
/// is ignored).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "'{s}' is not a size (expected e.g. 4096, 64K, 16M, 1.5G)"
        ));
    }
    let mult: u64 = match suffix
        .trim()
        .to_ascii_lowercase()
        .trim_end_matches('b')
        .trim_end_matches('i')
    {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        "p" => 1 << 50,
        _ => {
            return Err(format!(
                "'{s}': unknown size suffix '{suffix}' (use K, M, G, T)"
            ))
        }
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (expected e.g. 4096, 64K, 16M, 1.5G)"))?;
    let bytes = v * mult as f64;
    if !(0.0..1.8e19).contains(&bytes) {
        return Err(format!("'{s}' is out of range"));
    }
    Ok(bytes.round() as u64)
}

/// `1.00 GiB`, `512 B`.
pub fn fmt_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.2} {}", UNITS[u])
}

/// Decimal rate: `838 MB/s`, `1.21 GB/s`.
pub fn fmt_rate(bytes: u64, secs: f64) -> String {
    if secs <= 0.0 {
        return "-".into();
    }
    let r = bytes as f64 / secs;
    if r >= 1e9 {
        format!("{:.2} GB/s", r / 1e9)
    } else if r >= 1e6 {
        format!("{:.0} MB/s", r / 1e6)
    } else {
        format!("{:.0} kB/s", r / 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64K").unwrap(), 65536);
        assert_eq!(parse_size("16M").unwrap(), 16 << 20);
        assert_eq!(parse_size("16MiB").unwrap(), 16 << 20);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("2 GB").unwrap(), 2 << 30);
        assert!(parse_size("12X").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("-1").is_err());
        assert_eq!(fmt_bytes(1 << 30), "1.00 GiB");
        assert_eq!(fmt_bytes(100), "100 B");
        assert_eq!(fmt_rate(838_000_000, 1.0), "838 MB/s");
    }
}
