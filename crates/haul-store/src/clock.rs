//! Time for the store's records and messages: Unix time now, and UTC calendar dates computed
//! by hand (no calendar crate) for snapshot ids and lease expiries.
//!
//! It uses no other module of the crate, so `error` can describe a lease's expiry with it.

use std::time::{SystemTime, UNIX_EPOCH};

/// The time now, Unix milliseconds.
pub(crate) fn now_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// `at` Unix milliseconds as a UTC time and how far off it is, for messages.
pub(crate) fn describe_expiry(at: u64) -> String {
    let secs = i64::try_from(at / 1000).unwrap_or(i64::MAX);
    let when = utc(secs);
    let now = now_ms();
    if at <= now {
        format!("{when} (expired)")
    } else {
        let left = (at - now).div_ceil(1000);
        format!("{when} (in {left} s)")
    }
}

/// UTC calendar date and time of `secs` since the epoch (proleptic Gregorian).
pub(crate) fn civil(secs: i64) -> (i64, u32, u32, u32, u32, u32) {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    let rem = rem as u32;
    (y, m, d, rem / 3600, rem / 60 % 60, rem % 60)
}

/// Days since the epoch of a UTC calendar date (the inverse of [`civil`]'s date part).
pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2026-12-04 18:17:00 UTC` for `secs` since the epoch, for messages.
pub(crate) fn utc(secs: i64) -> String {
    let (y, mo, d, h, mi, s) = civil(secs);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02} UTC")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_time_round_trips_and_matches_known_dates() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(civil(1_700_000_000), (2023, 11, 14, 22, 13, 20));
        assert_eq!(civil(-1), (1969, 12, 31, 23, 59, 59));
        for secs in [
            0i64,
            951_782_400,
            1_700_000_000,
            4_102_444_800,
            1_234_567_890,
        ] {
            let (y, m, d, h, mi, s) = civil(secs);
            let back = days_from_civil(y, m.into(), d.into()) * 86_400
                + i64::from(h) * 3600
                + i64::from(mi) * 60
                + i64::from(s);
            assert_eq!(back, secs);
        }
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
    }
}
