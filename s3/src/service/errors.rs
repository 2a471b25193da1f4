//! Failures of the pipeline and of PostgreSQL as the S3 errors clients see:
//! an unavailable database is `503` (clients retry), a bad body or key the
//! client's error, anything else `500`; object path conflicts are `409`.

use s3s::{s3_error, S3Error, S3ErrorCode};

use crate::pipeline::PipelineError;

pub(super) fn db_error(e: sqlx::Error) -> S3Error {
    tracing::warn!(error = %e, "S3 request failed on PostgreSQL");
    s3_error!(ServiceUnavailable, "the database is unavailable; retry")
}

pub(super) fn pipeline_error(e: PipelineError) -> S3Error {
    match e {
        PipelineError::BodyLength { got, declared } => s3_error!(
            IncompleteBody,
            "the body has {got} bytes, Content-Length said {declared}"
        ),
        PipelineError::Body(why) => s3_error!(IncompleteBody, "reading the body failed: {why}"),
        // Replaced or deleted while being copied: a retry reads the new row.
        PipelineError::SourceGone(why) => s3_error!(
            InternalError,
            "the copy source changed during the copy ({why}); retry"
        ),
        e @ PipelineError::TooManyOpenUploads { .. } => s3_error!(SlowDown, "{e}"),
        e if e.is_invalid_path() => s3_error!(InvalidArgument, "{e}"),
        PipelineError::Db(e) => db_error(e),
        e => {
            tracing::warn!(error = %e, "S3 request failed in the pipeline");
            s3_error!(InternalError, "{e}")
        }
    }
}

/// `409 ObjectPathConflict` with this message.
fn object_path_conflict(message: String) -> S3Error {
    let mut e = S3Error::with_message(S3ErrorCode::Custom("ObjectPathConflict".into()), message);
    e.set_status_code(http::StatusCode::CONFLICT);
    e
}

pub(super) fn path_conflict(key: &str, other: &str) -> S3Error {
    object_path_conflict(format!(
        "key {key:?} and the existing object {other:?} cannot both exist: one would be a \
         directory of the other in MooseFS"
    ))
}

pub(super) fn completion_refused(why: &str) -> S3Error {
    object_path_conflict(format!("the object could not be put in place: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_many_open_uploads_is_slow_down_naming_the_limit() {
        let e = pipeline_error(PipelineError::TooManyOpenUploads {
            open: 1000,
            limit: 1000,
        });
        assert_eq!(*e.code(), S3ErrorCode::SlowDown);
        assert_eq!(
            e.status_code().or_else(|| e.code().status_code()),
            Some(http::StatusCode::SERVICE_UNAVAILABLE)
        );
        let message = e.message().unwrap_or_default();
        assert!(
            message.contains("the limit is 1000")
                && message.contains("S3_MAX_OPEN_UPLOADS_PER_KEY"),
            "{message}"
        );
    }
}
