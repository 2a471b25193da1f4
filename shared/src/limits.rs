//! Limits on what one ingest request may ask for: how many parts and how big
//! each may be, how deep and long its destination may be and which
//! characters it may not contain, and how many deliveries of a request
//! message are tried. Defaults here; operators set them through
//! [`crate::config::ServiceArgs`] (`INGEST_MAX_PARTS`, …). Pure checks: the
//! request validation in [`crate::ingest`] calls them before anything is
//! looked up or written.

/// Part sizes are whole MooseFS blocks.
pub const PART_SIZE_UNIT: u64 = 64 * 1024;
/// Most parts of one upload (as S3's multipart uploads).
pub const DEFAULT_MAX_PARTS: u64 = 10_000;
/// Smallest part size.
pub const DEFAULT_MIN_PART_SIZE: u64 = PART_SIZE_UNIT;
/// Largest part size (as S3's).
pub const DEFAULT_MAX_PART_SIZE: u64 = 5 << 30;
/// Most components of a destination path.
pub const DEFAULT_MAX_DEST_DEPTH: usize = 64;
/// Longest destination path, in bytes.
pub const DEFAULT_MAX_DEST_BYTES: usize = 1024;
/// Deliveries of one `ingest.requests` message before it is dead-lettered.
pub const DEFAULT_MAX_REQUEST_DELIVERIES: u32 = 20;

/// The limits a request is held to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLimits {
    pub max_parts: u64,
    pub min_part_size: u64,
    pub max_part_size: u64,
    pub max_dest_depth: usize,
    pub max_dest_bytes: usize,
    /// Deliveries of one request message (the first included) that failed
    /// on our side before it is dead-lettered with the last reason.
    pub max_request_deliveries: u32,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_parts: DEFAULT_MAX_PARTS,
            min_part_size: DEFAULT_MIN_PART_SIZE,
            max_part_size: DEFAULT_MAX_PART_SIZE,
            max_dest_depth: DEFAULT_MAX_DEST_DEPTH,
            max_dest_bytes: DEFAULT_MAX_DEST_BYTES,
            max_request_deliveries: DEFAULT_MAX_REQUEST_DELIVERIES,
        }
    }
}

/// Limits that cannot work together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LimitsError(String);

impl RequestLimits {
    /// Checks the limits are usable with each other and with `default_part_size`.
    pub fn validate(&self, default_part_size: u64) -> Result<(), LimitsError> {
        let bad = |what: String| Err(LimitsError(what));
        if self.max_parts == 0 || i32::try_from(self.max_parts).is_err() {
            return bad(format!("max parts {} is not in 1..=2^31-1", self.max_parts));
        }
        for (name, v) in [
            ("min part size", self.min_part_size),
            ("max part size", self.max_part_size),
            ("default part size", default_part_size),
        ] {
            if v == 0 || !v.is_multiple_of(PART_SIZE_UNIT) || i64::try_from(v).is_err() {
                return bad(format!(
                    "{name} {v} is not a positive multiple of {PART_SIZE_UNIT}"
                ));
            }
        }
        if !(self.min_part_size..=self.max_part_size).contains(&default_part_size) {
            return bad(format!(
                "default part size {default_part_size} is outside {}..={}",
                self.min_part_size, self.max_part_size
            ));
        }
        if self.max_dest_depth == 0 || self.max_dest_bytes == 0 || self.max_request_deliveries == 0
        {
            return bad("dest limits and max deliveries must be positive".into());
        }
        Ok(())
    }
}

/// A part size or part count the limits refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartLimitError {
    #[error("part_size {part_size} must be a multiple of {PART_SIZE_UNIT} bytes between {min} and {max}")]
    BadPartSize { part_size: u64, min: u64, max: u64 },
    #[error(
        "a source of {size} bytes in parts of {part_size} bytes (part_size) makes {parts} parts; \
         the limit is {limit} parts: use a part_size of at least {needed} bytes"
    )]
    TooManyParts {
        size: u64,
        part_size: u64,
        parts: u64,
        limit: u64,
        needed: u64,
    },
}

/// Checks a part size the request asked for (before the source is looked at).
pub fn check_part_size(part_size: u64, limits: &RequestLimits) -> Result<(), PartLimitError> {
    let (min, max) = (limits.min_part_size, limits.max_part_size);
    if part_size.is_multiple_of(PART_SIZE_UNIT) && (min..=max).contains(&part_size) {
        Ok(())
    } else {
        Err(PartLimitError::BadPartSize {
            part_size,
            min,
            max,
        })
    }
}

/// The part size of an upload of `size` bytes: the one asked for (checked,
/// and refused if it makes more than `max_parts` parts), or else the
/// smallest multiple of `default` that keeps within `max_parts`.
pub fn choose_part_size(
    size: u64,
    requested: Option<u64>,
    default: u64,
    limits: &RequestLimits,
) -> Result<u64, PartLimitError> {
    let part_size = match requested {
        Some(asked) => {
            check_part_size(asked, limits)?;
            asked
        }
        None => {
            let at_least = size.div_ceil(limits.max_parts.max(1));
            let multiple = at_least.div_ceil(default.max(1)).max(1);
            default.saturating_mul(multiple)
        }
    };
    let parts = size.div_ceil(part_size.max(1)).max(1);
    let too_big = requested.is_none() && part_size > limits.max_part_size;
    if parts > limits.max_parts || too_big {
        let needed = size
            .div_ceil(limits.max_parts.max(1))
            .div_ceil(PART_SIZE_UNIT)
            .saturating_mul(PART_SIZE_UNIT);
        return Err(PartLimitError::TooManyParts {
            size,
            part_size,
            parts,
            limit: limits.max_parts,
            needed,
        });
    }
    Ok(part_size)
}

/// A destination the limits refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestLimitError {
    #[error("dest is {bytes} bytes long; the limit is {limit} bytes")]
    TooLong { bytes: usize, limit: usize },
    #[error("dest has {depth} path components; the limit is {limit}")]
    TooDeep { depth: usize, limit: usize },
    #[error("dest contains {code} ({class}); control and bidirectional formatting characters are not allowed")]
    ForbiddenCharacter { code: String, class: &'static str },
}

/// Why a character may not appear in a destination, if it may not.
fn forbidden_class(c: char) -> Option<&'static str> {
    match c {
        '\0' => Some("a NUL byte, a control character"),
        c if c.is_control() => Some("a control character"),
        '\u{061C}'
        | '\u{200E}'
        | '\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2066}'..='\u{2069}' => Some("a bidirectional formatting character"),
        '\u{2028}' | '\u{2029}' => Some("a line or paragraph separator"),
        _ => None,
    }
}

/// Checks a destination's length (first, so a huge one costs nothing
/// more), characters and depth. Names and `..` are checked by
/// [`moosefs::MfsPath::parse`].
pub fn check_dest(dest: &str, limits: &RequestLimits) -> Result<(), DestLimitError> {
    if dest.len() > limits.max_dest_bytes {
        return Err(DestLimitError::TooLong {
            bytes: dest.len(),
            limit: limits.max_dest_bytes,
        });
    }
    if let Some((c, class)) = dest.chars().find_map(|c| Some((c, forbidden_class(c)?))) {
        return Err(DestLimitError::ForbiddenCharacter {
            code: format!("U+{:04X}", u32::from(c)),
            class,
        });
    }
    let depth = dest.split('/').filter(|c| !c.is_empty()).count();
    if depth > limits.max_dest_depth {
        return Err(DestLimitError::TooDeep {
            depth,
            limit: limits.max_dest_depth,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn part_sizes_outside_the_range_or_off_the_unit_are_refused() {
        let l = RequestLimits::default();
        for bad in [
            0,
            32768,
            65537,
            (5 << 30) + 65536,
            1 << 63,
            u64::MAX,
            u64::MAX - 65535,
        ] {
            assert!(check_part_size(bad, &l).is_err(), "{bad}");
        }
        for good in [65536, 64 * MIB, 5 << 30] {
            assert_eq!(check_part_size(good, &l), Ok(()), "{good}");
        }
    }

    #[test]
    fn the_part_count_is_capped_and_the_default_grows_to_fit() {
        let l = RequestLimits::default();
        let tib = 1u64 << 40;
        match choose_part_size(tib, Some(65536), 64 * MIB, &l) {
            Err(PartLimitError::TooManyParts { parts, needed, .. }) => {
                assert_eq!(parts, 16_777_216);
                assert!(tib.div_ceil(needed) <= 10_000 && needed.is_multiple_of(65536));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(choose_part_size(tib, None, 64 * MIB, &l), Ok(128 * MIB));
        assert_eq!(choose_part_size(10, None, 64 * MIB, &l), Ok(64 * MIB));
        assert_eq!(choose_part_size(0, None, 64 * MIB, &l), Ok(64 * MIB));
        assert_eq!(
            choose_part_size(10_000 * 65536, Some(65536), 64 * MIB, &l),
            Ok(65536)
        );
        assert!(choose_part_size(10_000 * 65536 + 1, Some(65536), 64 * MIB, &l).is_err());
        // Even the largest u64 size neither overflows nor panics.
        assert!(choose_part_size(u64::MAX, None, 64 * MIB, &l).is_err());
        assert!(choose_part_size(u64::MAX, Some(5 << 30), 64 * MIB, &l).is_err());
    }

    #[test]
    fn destinations_are_held_to_depth_length_and_characters() {
        let l = RequestLimits::default();
        assert_eq!(check_dest(&vec!["d"; 64].join("/"), &l), Ok(()));
        assert!(matches!(
            check_dest(&vec!["d"; 65].join("/"), &l),
            Err(DestLimitError::TooDeep { depth: 65, .. })
        ));
        assert_eq!(check_dest(&"x".repeat(1024), &l), Ok(()));
        assert!(matches!(
            check_dest(&"x".repeat(1025), &l),
            Err(DestLimitError::TooLong { bytes: 1025, .. })
        ));
        for (c, code) in [
            ('\u{202E}', "U+202E"),
            ('\u{2066}', "U+2066"),
            ('\u{200F}', "U+200F"),
            ('\u{1}', "U+0001"),
            ('\0', "NUL"),
            ('\u{9f}', "U+009F"),
            ('\u{2029}', "U+2029"),
        ] {
            let err = check_dest(&format!("a/b{c}c"), &l).unwrap_err();
            assert!(err.to_string().contains(code), "{err}");
        }
        assert_eq!(check_dest("répertoire/日本語/файл.bin", &l), Ok(()));
    }

    #[test]
    fn limits_that_cannot_work_are_refused() {
        let l = RequestLimits::default();
        assert_eq!(l.validate(64 * MIB), Ok(()));
        assert!(l.validate(1000).is_err());
        assert!(l.validate(10 << 30).is_err());
        let zero = RequestLimits {
            max_parts: 0,
            ..RequestLimits::default()
        };
        assert!(zero.validate(64 * MIB).is_err());
    }
}
