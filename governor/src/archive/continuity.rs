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

/// The full segments archived under `wal_dir` (`<prefix>wal_005/`), by number; partial
/// segments, backup labels and timeline histories are not segments recovery replays.
fn archived(wal_dir: &str, keys: &[String]) -> BTreeSet<u64> {
    keys.iter()
        .filter_map(|k| k.strip_prefix(wal_dir))
        .filter_map(|file| {
            // `<segment>.<compression>` only: no `.partial`, `.backup` or `.history` before it.
            let (name, ext) = file.split_once('.')?;
            if ext.contains('.') {
                return None;
            }
            spilo_model::governor::Compression::of(file)?;
            number(name)
        })
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
