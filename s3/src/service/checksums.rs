//! Checksums of multipart uploads, as S3 keeps them: the algorithm and type
//! an upload was created with (`x-amz-checksum-algorithm`,
//! `x-amz-checksum-type`, or S3's default), each part's checksum in that
//! algorithm, and the object's: COMPOSITE, the checksum of the parts' raw
//! checksums followed by `-<parts>`, or FULL_OBJECT, the CRC of the whole
//! object, combined from the parts' CRCs and sizes (`crc-fast`'s
//! `checksum_combine`: no object byte is read again).

use base64::Engine;
use s3s::dto::{Checksum, ChecksumAlgorithm, ChecksumType};
use s3s::{s3_error, S3Result};

/// A checksum algorithm of S3's (the five `x-amz-checksum-*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Crc32,
    Crc32c,
    Sha1,
    Sha256,
    Crc64Nvme,
}

impl Algorithm {
    pub const ALL: [Algorithm; 5] = [
        Algorithm::Crc32,
        Algorithm::Crc32c,
        Algorithm::Sha1,
        Algorithm::Sha256,
        Algorithm::Crc64Nvme,
    ];

    /// S3's name (`CRC32`, …), any case.
    pub fn parse(name: &str) -> Option<Algorithm> {
        Self::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(name))
    }

    /// S3's name, as `x-amz-checksum-algorithm` carries it.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Crc32 => ChecksumAlgorithm::CRC32,
            Algorithm::Crc32c => ChecksumAlgorithm::CRC32C,
            Algorithm::Sha1 => ChecksumAlgorithm::SHA1,
            Algorithm::Sha256 => ChecksumAlgorithm::SHA256,
            Algorithm::Crc64Nvme => ChecksumAlgorithm::CRC64NVME,
        }
    }

    /// The name in `x-amz-checksum-<key>` and in the stored checksums' JSON.
    pub fn key(self) -> &'static str {
        match self {
            Algorithm::Crc32 => "crc32",
            Algorithm::Crc32c => "crc32c",
            Algorithm::Sha1 => "sha1",
            Algorithm::Sha256 => "sha256",
            Algorithm::Crc64Nvme => "crc64nvme",
        }
    }

    /// The checksum types S3 allows with the algorithm: CRC64NVME only
    /// FULL_OBJECT, the SHAs only COMPOSITE, CRC32 and CRC32C both.
    pub fn supports(self, kind: Kind) -> bool {
        match self {
            Algorithm::Crc32 | Algorithm::Crc32c => true,
            Algorithm::Crc64Nvme => kind == Kind::FullObject,
            Algorithm::Sha1 | Algorithm::Sha256 => kind == Kind::Composite,
        }
    }

    /// S3's type for the algorithm when the request names none.
    pub fn default_kind(self) -> Kind {
        match self {
            Algorithm::Crc64Nvme => Kind::FullObject,
            _ => Kind::Composite,
        }
    }

    fn crc(self) -> Option<crc_fast::CrcAlgorithm> {
        match self {
            Algorithm::Crc32 => Some(crc_fast::CrcAlgorithm::Crc32IsoHdlc),
            Algorithm::Crc32c => Some(crc_fast::CrcAlgorithm::Crc32Iscsi),
            Algorithm::Crc64Nvme => Some(crc_fast::CrcAlgorithm::Crc64Nvme),
            Algorithm::Sha1 | Algorithm::Sha256 => None,
        }
    }

    /// A hasher of this algorithm alone.
    pub fn hasher(self) -> s3s::checksum::ChecksumHasher {
        let mut h = s3s::checksum::ChecksumHasher::default();
        self.enable(&mut h);
        h
    }

    /// Makes `h` compute this algorithm too.
    pub fn enable(self, h: &mut s3s::checksum::ChecksumHasher) {
        match self {
            Algorithm::Crc32 => h.crc32 = Some(Default::default()),
            Algorithm::Crc32c => h.crc32c = Some(Default::default()),
            Algorithm::Sha1 => h.sha1 = Some(Default::default()),
            Algorithm::Sha256 => h.sha256 = Some(Default::default()),
            Algorithm::Crc64Nvme => h.crc64nvme = Some(Default::default()),
        }
    }

    /// This algorithm's value in a [`Checksum`].
    pub fn get(self, c: &Checksum) -> Option<&String> {
        match self {
            Algorithm::Crc32 => c.checksum_crc32.as_ref(),
            Algorithm::Crc32c => c.checksum_crc32c.as_ref(),
            Algorithm::Sha1 => c.checksum_sha1.as_ref(),
            Algorithm::Sha256 => c.checksum_sha256.as_ref(),
            Algorithm::Crc64Nvme => c.checksum_crc64nvme.as_ref(),
        }
    }

    /// Sets this algorithm's value in a [`Checksum`].
    pub fn set(self, c: &mut Checksum, value: String) {
        let field = match self {
            Algorithm::Crc32 => &mut c.checksum_crc32,
            Algorithm::Crc32c => &mut c.checksum_crc32c,
            Algorithm::Sha1 => &mut c.checksum_sha1,
            Algorithm::Sha256 => &mut c.checksum_sha256,
            Algorithm::Crc64Nvme => &mut c.checksum_crc64nvme,
        };
        *field = Some(value);
    }

    /// The object's checksum from its parts' checksums (base64, this
    /// algorithm) and sizes, in order. `None` if there is no part or a
    /// part's checksum is not one of this algorithm, or for a type the
    /// algorithm does not support.
    pub fn combine(self, kind: Kind, parts: &[(&str, u64)]) -> Option<String> {
        if parts.is_empty() || !self.supports(kind) {
            return None;
        }
        let raw: Vec<Vec<u8>> = parts
            .iter()
            .map(|(c, _)| BASE64.decode(c.trim()).ok())
            .collect::<Option<_>>()?;
        let width = self.digest_len();
        if raw.iter().any(|r| r.len() != width) {
            return None;
        }
        match kind {
            Kind::Composite => {
                let mut h = self.hasher();
                h.update(&raw.concat());
                let whole = h.finalize();
                Some(format!("{}-{}", self.get(&whole)?, parts.len()))
            }
            Kind::FullObject => {
                let crc = self.crc()?;
                let value = |r: &[u8]| r.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
                let mut acc = value(&raw[0]);
                for (r, (_, len)) in raw.iter().zip(parts).skip(1) {
                    acc = crc_fast::checksum_combine(crc, acc, value(r), *len);
                }
                let bytes = acc.to_be_bytes();
                Some(BASE64.encode(&bytes[8 - width..]))
            }
        }
    }

    /// Bytes of a raw checksum of this algorithm.
    fn digest_len(self) -> usize {
        match self {
            Algorithm::Crc32 | Algorithm::Crc32c => 4,
            Algorithm::Crc64Nvme => 8,
            Algorithm::Sha1 => 20,
            Algorithm::Sha256 => 32,
        }
    }
}

const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// How an object's checksum is made from its parts' (`x-amz-checksum-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Composite,
    FullObject,
}

impl Kind {
    pub fn parse(name: &str) -> Option<Kind> {
        [Kind::Composite, Kind::FullObject]
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(name))
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Composite => ChecksumType::COMPOSITE,
            Kind::FullObject => ChecksumType::FULL_OBJECT,
        }
    }

    pub fn dto(self) -> ChecksumType {
        ChecksumType::from(self.name().to_string())
    }
}

/// The checksum of a multipart upload: what CreateMultipartUpload asked
/// for, or S3's default (CRC64NVME, FULL_OBJECT) when it named nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadChecksum {
    pub algorithm: Algorithm,
    pub kind: Kind,
    /// Whether the client named the algorithm: then every part must be
    /// sent with that algorithm if with any, and the part numbers listed
    /// in CompleteMultipartUpload must be 1, 2, 3, … (S3's rules).
    pub explicit: bool,
}

impl UploadChecksum {
    /// What S3 keeps for an upload created without a checksum algorithm.
    pub const DEFAULT: UploadChecksum = UploadChecksum {
        algorithm: Algorithm::Crc64Nvme,
        kind: Kind::FullObject,
        explicit: false,
    };

    /// A CreateMultipartUpload's `x-amz-checksum-algorithm` and
    /// `x-amz-checksum-type`, checked as S3 checks them: a type needs an
    /// algorithm, and the pair must be one S3 allows; no type is the
    /// algorithm's default type.
    pub fn requested(
        algorithm: Option<&ChecksumAlgorithm>,
        kind: Option<&ChecksumType>,
    ) -> S3Result<UploadChecksum> {
        let Some(algorithm) = algorithm else {
            if kind.is_some() {
                return Err(s3_error!(
                    InvalidRequest,
                    "The x-amz-checksum-type header can only be used with the \
                     x-amz-checksum-algorithm header."
                ));
            }
            return Ok(UploadChecksum::DEFAULT);
        };
        let algorithm = Algorithm::parse(algorithm.as_str()).ok_or_else(|| {
            s3_error!(
                InvalidRequest,
                "Checksum algorithm provided is unsupported. Please try again with any of the \
                 valid types: [CRC32, CRC32C, CRC64NVME, SHA1, SHA256]"
            )
        })?;
        let kind = match kind {
            None => algorithm.default_kind(),
            Some(k) => Kind::parse(k.as_str()).ok_or_else(|| {
                s3_error!(
                    InvalidRequest,
                    "Value for x-amz-checksum-type header is invalid."
                )
            })?,
        };
        if !algorithm.supports(kind) {
            return Err(s3_error!(
                InvalidRequest,
                "The {} checksum type cannot be used with the {} checksum algorithm.",
                kind.name(),
                algorithm.name().to_ascii_lowercase()
            ));
        }
        Ok(UploadChecksum {
            algorithm,
            kind,
            explicit: true,
        })
    }

    /// The upload row's columns (`s3_uploads.checksum_algorithm`,
    /// `checksum_type`; both NULL: S3's default).
    pub fn columns(self) -> (Option<&'static str>, Option<&'static str>) {
        if self.explicit {
            (Some(self.algorithm.name()), Some(self.kind.name()))
        } else {
            (None, None)
        }
    }

    /// The inverse of [`UploadChecksum::columns`]; a value the row cannot
    /// hold (its CHECK) is S3's default.
    pub fn from_columns(algorithm: Option<&str>, kind: Option<&str>) -> UploadChecksum {
        match algorithm.and_then(Algorithm::parse) {
            Some(algorithm) => UploadChecksum {
                algorithm,
                kind: kind
                    .and_then(Kind::parse)
                    .unwrap_or_else(|| algorithm.default_kind()),
                explicit: true,
            },
            None => UploadChecksum::DEFAULT,
        }
    }
}

/// The algorithms a request names: `x-amz-sdk-checksum-algorithm` and each
/// `x-amz-checksum-*` value given in the headers.
pub fn named(algorithm: Option<&ChecksumAlgorithm>, given: &Checksum) -> Vec<Algorithm> {
    let mut names: Vec<Algorithm> = algorithm
        .and_then(|a| Algorithm::parse(a.as_str()))
        .into_iter()
        .collect();
    for a in Algorithm::ALL {
        if a.get(given).is_some() && !names.contains(&a) {
            names.push(a);
        }
    }
    names
}

/// An object's stored checksums (`s3_objects.checksums`): the values by
/// algorithm key, and its type under `"type"`.
pub fn stored_json(algorithm: Algorithm, kind: Kind, value: &str) -> serde_json::Value {
    serde_json::json!({ algorithm.key(): value, "type": kind.name() })
}

/// The type stored with an object's checksums: the one recorded
/// (multipart uploads), else FULL_OBJECT when there is a checksum (a
/// PutObject's checksums are of the whole object).
pub fn stored_kind(checksums: &serde_json::Value) -> Option<Kind> {
    if let Some(kind) = checksums
        .get("type")
        .and_then(|v| v.as_str())
        .and_then(Kind::parse)
    {
        return Some(kind);
    }
    Algorithm::ALL
        .into_iter()
        .any(|a| checksums.get(a.key()).is_some())
        .then_some(Kind::FullObject)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_of(a: Algorithm, data: &[u8]) -> String {
        let mut h = a.hasher();
        h.update(data);
        a.get(&h.finalize()).cloned().unwrap()
    }

    /// A deterministic pseudo-random buffer.
    fn bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn full_object_crcs_combined_equal_the_crc_of_the_whole_object() {
        // Parts of odd and even sizes, one empty, one of a single byte.
        let sizes = [5 << 20, 1, 0, 777_777, 64 << 10, 3];
        let parts: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| bytes(*n, i as u64 + 1))
            .collect();
        let whole = parts.concat();
        for a in [Algorithm::Crc32, Algorithm::Crc32c, Algorithm::Crc64Nvme] {
            let sums: Vec<String> = parts.iter().map(|p| checksum_of(a, p)).collect();
            let listed: Vec<(&str, u64)> = sums
                .iter()
                .zip(&parts)
                .map(|(s, p)| (s.as_str(), p.len() as u64))
                .collect();
            assert_eq!(
                a.combine(Kind::FullObject, &listed),
                Some(checksum_of(a, &whole)),
                "{a:?}"
            );
            // One part: its own checksum.
            assert_eq!(
                a.combine(Kind::FullObject, &listed[..1]),
                Some(sums[0].clone())
            );
        }
    }

    #[test]
    fn composite_checksums_are_s3s() {
        // s3-tests' test_multipart_checksum_sha256: one part of 1024 'A's.
        let part = vec![b'A'; 1024];
        let sha = checksum_of(Algorithm::Sha256, &part);
        assert_eq!(sha, "arcu6553sHVAiX4MjW0j7I7vD4w6R+Gz9Ok0Q9lTa+0=");
        assert_eq!(
            Algorithm::Sha256.combine(Kind::Composite, &[(&sha, 1024)]),
            Some("Ok6Cs5b96ux6+MWQkJO7UBT5sKPBeXBLwvj/hK89smg=-1".into())
        );
        // A CRC32 composite: the CRC32 of the parts' big-endian CRCs.
        let (a, b) = (bytes(1000, 7), bytes(10, 8));
        let (ca, cb) = (
            checksum_of(Algorithm::Crc32, &a),
            checksum_of(Algorithm::Crc32, &b),
        );
        let mut raw = BASE64.decode(&ca).unwrap();
        raw.extend(BASE64.decode(&cb).unwrap());
        assert_eq!(
            Algorithm::Crc32.combine(Kind::Composite, &[(&ca, 1000), (&cb, 10)]),
            Some(format!("{}-2", checksum_of(Algorithm::Crc32, &raw)))
        );
    }

    #[test]
    fn s3_tests_known_values() {
        // ceph/s3-tests' test_multipart_use_cksum_helper_*: three 5 MiB
        // parts of 'A', 'B', 'C', each part's checksum and the object's.
        let five = 5u64 << 20;
        let cases = [
            (
                Algorithm::Crc32,
                Kind::FullObject,
                ["JRTCyQ==", "QoZTGg==", "YAgjqw=="],
                "WgDhBQ==",
            ),
            (
                Algorithm::Crc32c,
                Kind::FullObject,
                ["MDaLrw==", "TH4EZg==", "Z7mBIQ=="],
                "xU+Krw==",
            ),
            (
                Algorithm::Crc64Nvme,
                Kind::FullObject,
                ["L/E4WYn8v98=", "xW1l19VobYM=", "cK5MnNaWrW4="],
                "i+6LR0y3eFo=",
            ),
            (
                Algorithm::Sha1,
                Kind::Composite,
                [
                    "iIaTCGbm+vdVjNqIMF2S0T7ibMk=",
                    "LS/TJ32bAVKEwRu+sE3X7awh/lk=",
                    "6DDwovUaHwrKNXDMzOGbuvj9kxI=",
                ],
                "sizjvY4eud3MrcHdZM3cQ/ol39o=-3",
            ),
            (
                Algorithm::Sha256,
                Kind::Composite,
                [
                    "275VF5loJr1YYawit0XSHREhkFXYkkPKGuoK0x9VKxI=",
                    "mrHwOfjTL5Zwfj74F05HOQGLdUb7E5szdCbxgUSq6NM=",
                    "Vw7oB/nKQ5xWb3hNgbyfkvDiivl+U+/Dft48nfJfDow=",
                ],
                "uWBwpe1dxI4Vw8Gf0X9ynOdw/SS6VBzfWm9giiv1sf4=-3",
            ),
        ];
        for (a, kind, parts, object) in cases {
            // The parts' values are the checksums of the bytes.
            for (p, byte) in parts.iter().zip([b'A', b'B', b'C']) {
                assert_eq!(checksum_of(a, &vec![byte; five as usize]), *p, "{a:?}");
            }
            let listed: Vec<(&str, u64)> = parts.iter().map(|p| (*p, five)).collect();
            assert_eq!(a.combine(kind, &listed).as_deref(), Some(object), "{a:?}");
        }
    }

    #[test]
    fn combine_refuses_what_it_cannot_combine() {
        let sha = checksum_of(Algorithm::Sha256, b"x");
        assert_eq!(
            Algorithm::Sha256.combine(Kind::FullObject, &[(&sha, 1)]),
            None
        );
        assert_eq!(Algorithm::Crc32.combine(Kind::Composite, &[]), None);
        // A SHA-256 where a CRC32 belongs, and no base64 at all.
        assert_eq!(
            Algorithm::Crc32.combine(Kind::FullObject, &[(&sha, 1)]),
            None
        );
        assert_eq!(Algorithm::Crc32.combine(Kind::Composite, &[("*", 1)]), None);
    }

    #[test]
    fn upload_checksums_follow_s3s_rules() {
        let alg = |s: &str| ChecksumAlgorithm::from(s.to_string());
        let kind = |s: &str| ChecksumType::from(s.to_string());
        let code = |r: S3Result<UploadChecksum>| r.unwrap_err().code().as_str().to_string();
        assert_eq!(
            UploadChecksum::requested(None, None).unwrap(),
            UploadChecksum::DEFAULT
        );
        for (a, k) in [
            ("SHA256", Kind::Composite),
            ("SHA1", Kind::Composite),
            ("CRC32", Kind::Composite),
            ("CRC32C", Kind::Composite),
            ("CRC64NVME", Kind::FullObject),
        ] {
            let u = UploadChecksum::requested(Some(&alg(a)), None).unwrap();
            assert_eq!((u.algorithm.name(), u.kind, u.explicit), (a, k, true));
            let (ca, ck) = u.columns();
            assert_eq!(UploadChecksum::from_columns(ca, ck), u);
        }
        let full =
            UploadChecksum::requested(Some(&alg("CRC32")), Some(&kind("FULL_OBJECT"))).unwrap();
        assert_eq!(full.kind, Kind::FullObject);
        for (a, k) in [
            ("SHA256", "FULL_OBJECT"),
            ("SHA1", "FULL_OBJECT"),
            ("CRC64NVME", "COMPOSITE"),
            ("CRC32", "PARTIAL"),
            ("MD5", "COMPOSITE"),
        ] {
            assert_eq!(
                code(UploadChecksum::requested(Some(&alg(a)), Some(&kind(k)))),
                "InvalidRequest",
                "{a} {k}"
            );
        }
        assert_eq!(
            code(UploadChecksum::requested(None, Some(&kind("COMPOSITE")))),
            "InvalidRequest"
        );
        assert_eq!(
            UploadChecksum::from_columns(None, None),
            UploadChecksum::DEFAULT
        );
    }

    #[test]
    fn stored_kinds() {
        let sha = checksum_of(Algorithm::Sha256, b"x");
        assert_eq!(
            stored_kind(&stored_json(Algorithm::Sha256, Kind::Composite, &sha)),
            Some(Kind::Composite)
        );
        assert_eq!(
            stored_kind(&serde_json::json!({ "sha256": sha })),
            Some(Kind::FullObject)
        );
        assert_eq!(stored_kind(&serde_json::json!({})), None);
    }
}
