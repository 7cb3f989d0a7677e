//! Human sizes (`512MiB`, `10GiB`, `64K`) and durations (`250ms`, `5s`, `1m`, `1h30m`) for the
//! command line.

use std::time::Duration;

/// Parses a size. Binary units: `K`, `M`, `G`, `T` with or without `iB` (as rclone reads them);
/// decimal units: `KB`, `MB`, `GB`, `TB`; a bare number or `B` is bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {s:?}; write a size like 512MiB, 10GiB or 1000000"
            ))
        }
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size; write a size like 512MiB, 10GiB or 1000000"))?;
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(bytes as u64)
}

/// Parses a duration: one or more `NUMBER UNIT` pairs (`250ms`, `5s`, `1.5s`, `1m`, `1h30m`,
/// `2d`), units `ms`, `s`, `m`, `h`, `d`. A bare `0` is zero; any other bare number is refused,
/// since it is unclear whether seconds or milliseconds were meant.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const HINT: &str = "write a duration like 250ms, 5s, 1m or 1h";
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() {
        return Err(format!("empty duration; {HINT}"));
    }
    let mut rest = t;
    let mut total = 0f64;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at(n);
        let after = after.trim_start();
        let u = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(u);
        let value: f64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a duration; {HINT}"))?;
        let secs = match unit.to_ascii_lowercase().as_str() {
            "ms" => 0.001,
            "s" | "sec" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            "" => return Err(format!("{s:?} has no unit; {HINT}")),
            _ => return Err(format!("unknown unit {unit:?} in {s:?}; {HINT}")),
        };
        total += value * secs;
        rest = next.trim_start();
    }
    Duration::try_from_secs_f64(total).map_err(|_| format!("{s:?} is out of range"))
}

/// Prints a duration as [`parse_duration`] reads it (whole milliseconds).
pub fn duration_arg(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// Prints a byte count the way people read it.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("1.5 GiB"), Ok(3 << 29));
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12 parsecs")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_size("MiB").unwrap_err().contains("not a size"));
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(12), "12 B");
    }

    #[test]
    fn durations() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("250ms"), Ok(ms(250)));
        assert_eq!(parse_duration("5s"), Ok(ms(5000)));
        assert_eq!(parse_duration("1.5s"), Ok(ms(1500)));
        assert_eq!(parse_duration("1m"), Ok(ms(60_000)));
        assert_eq!(parse_duration("1h"), Ok(ms(3_600_000)));
        assert_eq!(parse_duration("1h30m"), Ok(ms(5_400_000)));
        assert_eq!(parse_duration("2 m 5 s"), Ok(ms(125_000)));
        assert_eq!(parse_duration("1d"), Ok(ms(86_400_000)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration(&duration_arg(ms(1234))), Ok(ms(1234)));
        assert!(parse_duration("5").unwrap_err().contains("has no unit"));
        assert!(parse_duration("5 fortnights")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_duration("soon").unwrap_err().contains("250ms"));
        assert!(parse_duration("").unwrap_err().contains("empty"));
        assert!(parse_duration("1e400s").is_err());
    }
}
