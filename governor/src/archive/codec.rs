//! Compression of archived files: LZ4 frames (the default) or zstd frames, both with their
//! format's content checksum, so a stored file that was altered fails to decode instead of
//! handing PostgreSQL garbage. These are the formats WAL-G writes (`.lz4`, `.zst`), so the
//! archive stays readable by existing tooling (`lz4 -d`, `zstd -d`). Both go through the C
//! reference libraries (liblz4, libzstd).

use std::io::{Read, Write};

/// The compression method (the contract's `archive.compression`).
pub use spilo_model::governor::Compression as Method;

/// Why a stored file could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("the stored file is corrupt ({0})")]
pub struct Corrupt(String);

/// Compresses `data`.
pub fn compress(method: Method, data: &[u8]) -> std::io::Result<Vec<u8>> {
    match method {
        Method::Lz4 => {
            let mut enc = lz4::EncoderBuilder::new()
                .level(1)
                .checksum(lz4::ContentChecksum::ChecksumEnabled)
                .build(Vec::with_capacity(data.len() / 2))?;
            enc.write_all(data)?;
            let (out, r) = enc.finish();
            r.map(|()| out)
        }
        Method::Zstd => {
            let mut enc = zstd::Encoder::new(Vec::new(), 3)?;
            enc.include_checksum(true)?;
            enc.write_all(data)?;
            enc.finish()
        }
    }
}

/// Decompresses `data`, checking the frame's checksum.
pub fn decompress(method: Method, data: &[u8]) -> Result<Vec<u8>, Corrupt> {
    let mut out = Vec::new();
    let r = match method {
        // `finish` tells a frame that ended early (a truncated object) from a whole one.
        Method::Lz4 => lz4::Decoder::new(data).and_then(|mut d| {
            d.read_to_end(&mut out)?;
            d.finish().1.map(|()| out.len())
        }),
        Method::Zstd => zstd::Decoder::new(data).and_then(|mut d| d.read_to_end(&mut out)),
    };
    r.map_err(|e| Corrupt(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_methods_round_trip_and_detect_a_flipped_byte() {
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for m in [Method::Lz4, Method::Zstd] {
            let c = compress(m, &data).expect("compresses");
            assert!(c.len() < data.len() / 2, "{m:?} compresses");
            assert_eq!(decompress(m, &c).expect("decodes"), data);
            let mut bad = c.clone();
            let at = bad.len() / 2;
            bad[at] ^= 0x40;
            assert!(decompress(m, &bad).is_err(), "{m:?} detects corruption");
            assert!(
                decompress(m, &c[..c.len() - 3]).is_err(),
                "{m:?} detects truncation"
            );
        }
        assert_eq!(
            Method::of("000000010000000000000001.lz4"),
            Some(Method::Lz4)
        );
        assert_eq!(Method::of("00000002.history.zst"), Some(Method::Zstd));
    }
}
