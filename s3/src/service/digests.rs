//! The digests a client sends with a body (Content-MD5 and the
//! `x-amz-checksum-*` headers or trailers), checked against what the body
//! hashed to, and the multipart ETag.

use md5::Digest;
use s3s::dto::ChecksumAlgorithm;
use s3s::{s3_error, S3Result};

use super::checksums::Algorithm;

/// The digests a client sent with a body (headers; trailers are read after it).
#[derive(Default)]
pub(super) struct Digests {
    pub content_md5: Option<String>,
    pub crc32: Option<String>,
    pub crc32c: Option<String>,
    pub sha1: Option<String>,
    pub sha256: Option<String>,
    pub crc64nvme: Option<String>,
    pub algorithm: Option<ChecksumAlgorithm>,
}

impl Digests {
    /// The `x-amz-checksum-*` values given in the headers.
    pub(super) fn given(&self) -> s3s::dto::Checksum {
        s3s::dto::Checksum {
            checksum_crc32: self.crc32.clone(),
            checksum_crc32c: self.crc32c.clone(),
            checksum_sha1: self.sha1.clone(),
            checksum_sha256: self.sha256.clone(),
            checksum_crc64nvme: self.crc64nvme.clone(),
            ..Default::default()
        }
    }
}

/// The [`Digests`] of an input that has the digest fields of a body
/// (PutObject, UploadPart).
macro_rules! digests_of {
    ($input:expr) => {
        $crate::service::digests::Digests {
            content_md5: $input.content_md5.clone(),
            crc32: $input.checksum_crc32.clone(),
            crc32c: $input.checksum_crc32c.clone(),
            sha1: $input.checksum_sha1.clone(),
            sha256: $input.checksum_sha256.clone(),
            crc64nvme: $input.checksum_crc64nvme.clone(),
            algorithm: $input.checksum_algorithm.clone(),
        }
    };
}
pub(super) use digests_of;

/// An output with the checksum fields of a body (PutObject, UploadPart),
/// those fields set from what the body hashed to.
macro_rules! with_checksums {
    ($output:ident { $($field:ident: $value:expr),* $(,)? }, $checksum:expr) => {{
        let checksum: s3s::dto::Checksum = $checksum;
        $output {
            $($field: $value,)*
            checksum_crc32: checksum.checksum_crc32,
            checksum_crc32c: checksum.checksum_crc32c,
            checksum_sha1: checksum.checksum_sha1,
            checksum_sha256: checksum.checksum_sha256,
            checksum_crc64nvme: checksum.checksum_crc64nvme,
            ..Default::default()
        }
    }};
}
pub(super) use with_checksums;

impl Digests {
    /// Whether the client sent or named any `x-amz-checksum-*` (in the
    /// headers, or by `x-amz-sdk-checksum-algorithm` for a trailer);
    /// Content-MD5 is not one.
    pub(super) fn names_a_checksum(&self) -> bool {
        self.algorithm.is_some()
            || [
                &self.crc32,
                &self.crc32c,
                &self.sha1,
                &self.sha256,
                &self.crc64nvme,
            ]
            .iter()
            .any(|v| v.is_some())
    }

    /// A hasher of every algorithm the client sent or named, and of
    /// `keep` (the upload's algorithm, whose value the part row keeps).
    pub(super) fn hasher(&self, keep: Option<Algorithm>) -> s3s::checksum::ChecksumHasher {
        let mut h = s3s::checksum::ChecksumHasher::default();
        if let Some(keep) = keep {
            keep.enable(&mut h);
        }
        let alg = self.algorithm.as_ref().map(|a| a.as_str().to_string());
        let wants = |given: &Option<String>, name: &str| {
            given.is_some() || alg.as_deref().is_some_and(|a| a.eq_ignore_ascii_case(name))
        };
        if wants(&self.crc32, ChecksumAlgorithm::CRC32) {
            h.crc32 = Some(Default::default());
        }
        if wants(&self.crc32c, ChecksumAlgorithm::CRC32C) {
            h.crc32c = Some(Default::default());
        }
        if wants(&self.sha1, ChecksumAlgorithm::SHA1) {
            h.sha1 = Some(Default::default());
        }
        if wants(&self.sha256, ChecksumAlgorithm::SHA256) {
            h.sha256 = Some(Default::default());
        }
        if wants(&self.crc64nvme, ChecksumAlgorithm::CRC64NVME) {
            h.crc64nvme = Some(Default::default());
        }
        h
    }

    /// Content-MD5 against the body's MD5, each `x-amz-checksum-*` given (in
    /// the headers or the trailers) against what the body hashed to.
    pub(super) fn verify(
        &self,
        md5_hex: &str,
        computed: &s3s::dto::Checksum,
        trailers: Option<s3s::TrailingHeaders>,
    ) -> S3Result<()> {
        if let Some(content_md5) = &self.content_md5 {
            let expected = base64_decode(content_md5)
                .ok_or_else(|| s3_error!(InvalidDigest, "Content-MD5 is not base64"))?;
            if hex(&expected) != md5_hex {
                return Err(s3_error!(
                    BadDigest,
                    "the Content-MD5 you specified did not match what we received"
                ));
            }
        }
        let trailers = trailers.and_then(|t| t.take());
        let from_trailer = |name: &str| {
            trailers
                .as_ref()
                .and_then(|t| t.get(name))
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let pairs = [
            ("crc32", &self.crc32, &computed.checksum_crc32),
            ("crc32c", &self.crc32c, &computed.checksum_crc32c),
            ("sha1", &self.sha1, &computed.checksum_sha1),
            ("sha256", &self.sha256, &computed.checksum_sha256),
            ("crc64nvme", &self.crc64nvme, &computed.checksum_crc64nvme),
        ];
        for (name, given, got) in pairs {
            let given = given
                .clone()
                .or_else(|| from_trailer(&format!("x-amz-checksum-{name}")));
            if let (Some(given), Some(got)) = (given, got) {
                if &given != got {
                    return Err(s3_error!(
                        BadDigest,
                        "the x-amz-checksum-{name} you specified did not match what we received"
                    ));
                }
            }
        }
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let s = s.trim().trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = ALPHABET.iter().position(|&a| a == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// The multipart ETag: `md5(md5₁‖…‖md5ₙ)-n`.
pub fn multipart_etag(part_md5s: &[&str]) -> Option<String> {
    let mut h = md5::Md5::new();
    for m in part_md5s {
        h.update(unhex(m)?);
    }
    Some(format!("{}-{}", hex(&h.finalize()), part_md5s.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0cc175b9c0f1b6a831c399e269772661";
    const B: &str = "92eb5ffee6ae2fec3ad71c777531578f";

    #[test]
    fn multipart_etag_is_the_md5_of_the_part_md5s() {
        // md5(md5("a") ‖ md5("b")) computed independently.
        let mut h = md5::Md5::new();
        h.update(unhex(A).unwrap());
        h.update(unhex(B).unwrap());
        assert_eq!(
            multipart_etag(&[A, B]).unwrap(),
            format!("{}-2", hex(&h.finalize()))
        );
        assert!(multipart_etag(&["zz"]).is_none());
    }

    #[test]
    fn base64_digests_decode() {
        // base64 of md5("a")
        assert_eq!(hex(&base64_decode("DMF1ucDxtqgxw5niaXcmYQ==").unwrap()), A);
        assert!(base64_decode("not*base64").is_none());
    }
}
