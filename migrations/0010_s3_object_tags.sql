-- Object tagging of the S3 endpoint (issue 14): PutObjectTagging,
-- GetObjectTagging, DeleteObjectTagging, and `x-amz-tagging` on PutObject,
-- CreateMultipartUpload and CopyObject. The tags live with the object row;
-- an upload carries the tags its request gave (or a copy's source had) until
-- its completion writes the object row, which takes them from the upload
-- row like every other column, in the same transaction. An overwrite thus
-- replaces the tags with its own (none if it gave none), as in S3.
--
-- A tag set is a JSON array of {"Key": …, "Value": …} sorted by key (byte
-- order): the order S3 lists them in. The endpoint checks the limits
-- (≤ 10 tags, key 1..128 and value 0..256 characters, unique keys) before
-- anything is written; the CHECKs below only keep the column an array.
ALTER TABLE s3_uploads ADD COLUMN tags jsonb NOT NULL DEFAULT '[]'
    CHECK (jsonb_typeof(tags) = 'array');
ALTER TABLE s3_objects ADD COLUMN tags jsonb NOT NULL DEFAULT '[]'
    CHECK (jsonb_typeof(tags) = 'array');

-- Migration 0007's function, with the tags carried from the upload row to
-- the object row (the trigger itself is unchanged). NOTE for merging: 0009
-- (checksums of multipart uploads) replaces this function too; the merged
-- function carries both its columns and `tags`.
CREATE OR REPLACE FUNCTION s3_object_on_completion() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO s3_objects (bucket, key, session_id, inode, size, etag, content_type,
                            metadata, checksums, tags, last_modified)
    SELECT u.bucket, u.key, u.upload_id, NEW.final_inode, NEW.size, u.etag, u.content_type,
           u.metadata, u.checksums, u.tags, NEW.finished_at
      FROM s3_uploads u
     WHERE u.upload_id = NEW.id
    ON CONFLICT (bucket, key) DO UPDATE
       SET session_id = EXCLUDED.session_id, inode = EXCLUDED.inode, size = EXCLUDED.size,
           etag = EXCLUDED.etag, content_type = EXCLUDED.content_type,
           metadata = EXCLUDED.metadata, checksums = EXCLUDED.checksums,
           tags = EXCLUDED.tags, last_modified = EXCLUDED.last_modified
     WHERE s3_objects.last_modified <= EXCLUDED.last_modified;
    RETURN NULL;
END
$$;
