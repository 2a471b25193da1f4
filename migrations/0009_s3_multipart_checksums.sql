-- Checksums of multipart uploads (issue 14, the S3 endpoint), as S3 keeps them.
--
-- CreateMultipartUpload may name an algorithm (x-amz-checksum-algorithm) and a
-- type (x-amz-checksum-type): COMPOSITE, the checksum of the parts' checksums
-- ("<base64>-<parts>"), or FULL_OBJECT, the CRC of the whole object, combined
-- from the parts' CRCs and sizes. Both NULL: the upload named none, and the
-- endpoint keeps S3's default for it (CRC64NVME, FULL_OBJECT).
ALTER TABLE s3_uploads
    ADD COLUMN checksum_algorithm text
        CHECK (checksum_algorithm IN ('CRC32', 'CRC32C', 'SHA1', 'SHA256', 'CRC64NVME')),
    ADD COLUMN checksum_type text
        CHECK (checksum_type IN ('COMPOSITE', 'FULL_OBJECT'));

-- The committed attempt's checksum in the upload's algorithm (base64), computed
-- by the endpoint while the part streamed in, whatever the client sent. NULL
-- for a part whose bytes were not streamed (a CopyObject's snapshot).
ALTER TABLE s3_parts ADD COLUMN checksum text;

-- The object's checksum needs no new column: it is stored in the upload's
-- `checksums` (jsonb, {"<algorithm>": value, "type": "COMPOSITE"|"FULL_OBJECT"})
-- at the freeze and copied to the object row by s3_object_on_completion
-- (migration 0007) unchanged.
