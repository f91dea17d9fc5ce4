//! Whether an archive's WAL reaches from a base backup to its newest segment without a hole:
//! recovery stops at the first missing segment and would promote there, silently leaving out
//! everything archived after it. Pure: works on the keys a store lists. Segments are the
//! default 16 MiB (256 per log file).

use std::collections::BTreeSet;

/// Segments per log file with 16 MiB segments.
const SEGMENTS_PER_LOG: u64 = 0x100;

/// The position of a full segment's name `TTTTTTTTLLLLLLLLSSSSSSSS` in the WAL, across
/// timelines (a segment of a later timeline continues the same numbering).
fn number(name: &str) -> Option<u64> {
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let log = u64::from_str_radix(name.get(8..16)?, 16).ok()?;
    let seg = u64::from_str_radix(name.get(16..24)?, 16).ok()?;
    (seg < SEGMENTS_PER_LOG).then_some(log * SEGMENTS_PER_LOG + seg)
}

/// The `LLLLLLLLSSSSSSSS` part of the segment at `n`.
fn position(n: u64) -> String {
    format!("{:08X}{:08X}", n / SEGMENTS_PER_LOG, n % SEGMENTS_PER_LOG)
}

/// The full segments archived under `wal_dir` (`<prefix>wal_005/`): (file name, key);
/// partial segments, backup labels and timeline histories are not segments recovery replays.
pub fn segment_keys<'a>(
    wal_dir: &'a str,
    keys: &'a [String],
) -> impl Iterator<Item = (&'a str, &'a String)> + 'a {
    keys.iter().filter_map(move |k| {
        let file = k.strip_prefix(wal_dir)?;
        // `<segment>.<compression>` only: no `.partial`, `.backup` or `.history` before it.
        let (name, ext) = file.split_once('.')?;
        if ext.contains('.') {
            return None;
        }
        spilo_model::governor::Compression::of(file)?;
        number(name).map(|_| (name, k))
    })
}

/// The full segments archived under `wal_dir`, by number.
fn archived(wal_dir: &str, keys: &[String]) -> BTreeSet<u64> {
    segment_keys(wal_dir, keys)
        .filter_map(|(name, _)| number(name))
        .collect()
}

/// The newest archived segment's position (`LLLLLLLLSSSSSSSS`) when every segment from
/// `start_file` (a base backup's first) to it is archived; otherwise which one is missing.
pub fn check(start_file: &str, wal_dir: &str, keys: &[String]) -> Result<String, String> {
    let start = number(start_file).ok_or_else(|| {
        format!("the backup's first WAL file {start_file:?} is not a segment name")
    })?;
    let have = archived(wal_dir, keys);
    let Some(&newest) = have.iter().next_back().filter(|n| **n >= start) else {
        return Err(format!(
            "no WAL is archived from the backup's first segment ({}) on",
            position(start)
        ));
    };
    if let Some(missing) = (start..=newest).find(|n| !have.contains(n)) {
        return Err(format!(
            "the archive has a gap: segment {} is missing between the backup's first ({}) and \
             the newest archived ({}); recovery would stop there and leave out what follows",
            position(missing),
            position(start),
            position(newest)
        ));
    }
    Ok(position(newest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| format!("p/wal_005/{n}")).collect()
    }

    #[test]
    fn contiguous_segments_across_a_log_boundary_and_a_timeline_switch_have_no_gap() {
        let k = keys(&[
            "0000000100000000000000FE.lz4",
            "0000000100000000000000FF.lz4",
            "000000010000000100000000.zst",
            "000000010000000100000001.partial.lz4",
            "000000020000000100000001.lz4",
            "00000002.history.lz4",
            "000000010000000000000002.00000028.backup.lz4",
        ]);
        assert_eq!(
            check("0000000100000000000000FE", "p/wal_005/", &k),
            Ok("0000000100000001".into())
        );
    }

    #[test]
    fn a_missing_segment_or_no_wal_at_all_is_refused() {
        let k = keys(&[
            "000000010000000000000003.lz4",
            "000000010000000000000005.lz4",
        ]);
        let why = check("000000010000000000000003", "p/wal_005/", &k).expect_err("gap");
        assert!(why.contains("segment 0000000000000004 is missing"), "{why}");
        let why = check("000000010000000000000009", "p/wal_005/", &k).expect_err("none");
        assert!(why.contains("no WAL is archived"), "{why}");
        // Only a partial segment where the full one should be: a gap.
        let k = keys(&[
            "000000010000000000000003.lz4",
            "000000010000000000000004.partial.lz4",
            "000000020000000000000005.lz4",
        ]);
        assert!(check("000000010000000000000003", "p/wal_005/", &k).is_err());
    }
}

/// A timeline's end, from a timeline history file: timeline `timeline` ran until `switch`
/// (a byte position), where its child began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switch {
    /// The timeline that ended.
    pub timeline: u32,
    /// Where it ended.
    pub switch: u64,
}

/// Parses a timeline history file (`1\t0/5000000\tno recovery target specified`).
pub fn parse_history(text: &str) -> Vec<Switch> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let timeline = f.next()?.parse().ok()?;
            let switch: spilo_model::Lsn = f.next()?.parse().ok()?;
            Some(Switch {
                timeline,
                switch: switch.0,
            })
        })
        .collect()
}

/// The first segment recovery would miss, named with the timeline it is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// The segment's file name (`TTTTTTTTLLLLLLLLSSSSSSSS`).
    pub segment: String,
    /// Its timeline.
    pub timeline: u32,
}

/// The segments recovery replays from `start_file` (a base backup's first) to the newest one
/// archived on `newest_timeline`, each on the timeline `history` (the newest timeline's
/// history) says it belongs to: a segment holding a switch position is read from the child
/// timeline (PostgreSQL copies it there). Returns their names in order, or the first missing.
pub fn timeline_path(
    start_file: &str,
    wal_dir: &str,
    keys: &[String],
    history: &[Switch],
    newest_timeline: u32,
) -> Result<Vec<String>, Gap> {
    let start = number(start_file).ok_or_else(|| Gap {
        segment: start_file.to_string(),
        timeline: 0,
    })?;
    let timeline_of = |n: u64| {
        history
            .iter()
            .find(|s| n < s.switch / (16 << 20))
            .map_or(newest_timeline, |s| s.timeline)
    };
    let name = |n: u64| format!("{:08X}{}", timeline_of(n), position(n));
    let have: BTreeSet<&str> = segment_keys(wal_dir, keys).map(|(name, _)| name).collect();
    // The newest segment: the last one archived on the timeline its number belongs to.
    let newest = have
        .iter()
        .filter_map(|n| number(n).map(|num| (num, n)))
        .filter(|(num, n)| *num >= start && **n == name(*num))
        .map(|(num, _)| num)
        .max()
        .unwrap_or(start);
    let mut out = Vec::new();
    for n in start..=newest {
        let segment = name(n);
        if !have.contains(segment.as_str()) {
            return Err(Gap {
                timeline: timeline_of(n),
                segment,
            });
        }
        out.push(segment);
    }
    Ok(out)
}

#[cfg(test)]
mod timeline_tests {
    use super::*;

    fn keys(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| format!("p/wal_005/{n}.lz4")).collect()
    }

    #[test]
    fn the_path_follows_the_history_across_a_switch() {
        // Timeline 1 ended in segment 5 (0/5000100): segment 5 onward comes from timeline 2.
        let history = parse_history("1\t0/5000100\tno recovery target specified\n");
        assert_eq!(
            history,
            vec![Switch {
                timeline: 1,
                switch: 0x500_0100
            }]
        );
        let k = keys(&[
            "000000010000000000000003",
            "000000010000000000000004",
            "000000010000000000000005",
            "000000020000000000000005",
            "000000020000000000000006",
            "00000002.history",
        ]);
        let path = timeline_path("000000010000000000000003", "p/wal_005/", &k, &history, 2)
            .expect("whole");
        assert_eq!(
            path,
            vec![
                "000000010000000000000003",
                "000000010000000000000004",
                "000000020000000000000005",
                "000000020000000000000006"
            ]
        );
    }

    #[test]
    fn a_missing_segment_is_named_with_its_timeline() {
        let history = parse_history("1\t0/5000100\tno recovery target specified\n");
        // Segment 6 exists only on the old timeline, which recovery does not read there.
        let k = keys(&[
            "000000010000000000000004",
            "000000020000000000000005",
            "000000010000000000000006",
            "000000020000000000000007",
        ]);
        assert_eq!(
            timeline_path("000000010000000000000004", "p/wal_005/", &k, &history, 2),
            Err(Gap {
                segment: "000000020000000000000006".into(),
                timeline: 2
            })
        );
        // Nothing after the backup's first segment: the path is that one segment, if there.
        let k = keys(&["000000010000000000000004"]);
        assert_eq!(
            timeline_path("000000010000000000000004", "p/wal_005/", &k, &[], 1),
            Ok(vec!["000000010000000000000004".to_string()])
        );
    }
}
