# The audit trail of the token key: every GenerateDataKey/Decrypt/ReEncrypt carries the
# encryption context {"purpose", "user_id", "provider"}, and CloudTrail records it in
# requestParameters.encryptionContext, with the calling principal. docs/audit.md holds the
# Athena and CloudTrail Lake queries over what this file sets up.
#
# KMS has no CloudTrail "data events": its cryptographic calls are read-only *management*
# events, recorded by any trail that logs management events with read_write_type "All" and
# does not exclude kms.amazonaws.com. This trail does exactly that (all regions, so a key
# used from elsewhere is still seen), to an encrypted, versioned, private S3 bucket and to a
# CloudWatch log group that the KMS alarms (alarms.tf) filter.
#
# The bucket has S3 Object Lock in compliance mode: for cloudtrail_object_lock_days after it
# is written, no principal of this account, the root user included, can delete or overwrite
# a log file version, and the retention cannot be shortened. What Object Lock cannot stop
# (stopping the trail, changing what it records, scheduling the infra key's deletion) raises
# the EventBridge alarms of alarms.tf. The stronger arrangement is an organisation trail
# delivering to a bucket in a separate log-archive account (README, "Audit trail").

resource "aws_s3_bucket" "trail" {
  #checkov:skip=CKV_AWS_18: This bucket is the audit log itself; server access logs would need yet another bucket. Object-level reads of it can be recorded as S3 data events by the organisation trail.
  #checkov:skip=CKV_AWS_144: Cross-region replication is an organisation decision (and needs a destination bucket and key in another region); the trail's log file validation and versioning guard integrity here.
  #checkov:skip=CKV2_AWS_62: Nothing consumes new-object notifications; queries go through Athena or CloudTrail Lake (docs/audit.md).
  count = var.create_cloudtrail ? 1 : 0

  bucket        = "${var.name}-trail-${local.account_id}-${local.region}"
  force_destroy = false

  # Object Lock can only be switched on at creation through this argument (an existing
  # bucket: README, "Audit trail").
  object_lock_enabled = true
}

resource "aws_s3_bucket_object_lock_configuration" "trail" {
  count  = var.create_cloudtrail ? 1 : 0
  bucket = aws_s3_bucket.trail[0].id

  rule {
    default_retention {
      mode = "COMPLIANCE"
      days = var.cloudtrail_object_lock_days
    }
  }

  lifecycle {
    precondition {
      condition     = var.cloudtrail_object_lock_days <= var.cloudtrail_s3_retention_days
      error_message = "cloudtrail_object_lock_days must not exceed cloudtrail_s3_retention_days (the lifecycle rule could not expire what is still locked)."
    }
  }

  depends_on = [aws_s3_bucket_versioning.trail]
}

resource "aws_s3_bucket_ownership_controls" "trail" {
  count  = var.create_cloudtrail ? 1 : 0
  bucket = aws_s3_bucket.trail[0].id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "trail" {
  count  = var.create_cloudtrail ? 1 : 0
  bucket = aws_s3_bucket.trail[0].id

  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "trail" {
  count  = var.create_cloudtrail ? 1 : 0
  bucket = aws_s3_bucket.trail[0].id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "trail" {
  count  = var.create_cloudtrail ? 1 : 0
  bucket = aws_s3_bucket.trail[0].id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.infra.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "trail" {
  count  = var.create_cloudtrail ? 1 : 0
  bucket = aws_s3_bucket.trail[0].id

  rule {
    id     = "expire-old-trail-logs"
    status = "Enabled"

    filter {}

    expiration {
      days = var.cloudtrail_s3_retention_days
    }
    noncurrent_version_expiration {
      noncurrent_days = 30
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }
}

data "aws_iam_policy_document" "trail_bucket" {
  count = var.create_cloudtrail ? 1 : 0

  statement {
    sid     = "CloudTrailAclCheck"
    actions = ["s3:GetBucketAcl"]
    principals {
      type        = "Service"
      identifiers = ["cloudtrail.amazonaws.com"]
    }
    resources = [aws_s3_bucket.trail[0].arn]
    condition {
      test     = "StringEquals"
      variable = "aws:SourceArn"
      values   = [local.trail_arn]
    }
  }

  statement {
    sid     = "CloudTrailWrite"
    actions = ["s3:PutObject"]
    principals {
      type        = "Service"
      identifiers = ["cloudtrail.amazonaws.com"]
    }
    resources = ["${aws_s3_bucket.trail[0].arn}/AWSLogs/${local.account_id}/*"]
    condition {
      test     = "StringEquals"
      variable = "aws:SourceArn"
      values   = [local.trail_arn]
    }
  }

  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    resources = [aws_s3_bucket.trail[0].arn, "${aws_s3_bucket.trail[0].arn}/*"]
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "trail" {
  count  = var.create_cloudtrail ? 1 : 0
  bucket = aws_s3_bucket.trail[0].id
  policy = data.aws_iam_policy_document.trail_bucket[0].json

  depends_on = [aws_s3_bucket_public_access_block.trail]
}

# A copy of the trail in CloudWatch Logs, for the metric filters in alarms.tf (KMS throttling,
# changes to the token key).
resource "aws_cloudwatch_log_group" "trail" {
  count = var.create_cloudtrail ? 1 : 0

  name              = "/aws/cloudtrail/${local.trail_name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.infra.arn
}

data "aws_iam_policy_document" "trail_to_logs_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["cloudtrail.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceArn"
      values   = [local.trail_arn]
    }
  }
}

resource "aws_iam_role" "trail_to_logs" {
  count = var.create_cloudtrail ? 1 : 0

  name               = "${var.name}-trail-to-logs"
  assume_role_policy = data.aws_iam_policy_document.trail_to_logs_assume.json
}

data "aws_iam_policy_document" "trail_to_logs" {
  count = var.create_cloudtrail ? 1 : 0

  statement {
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.trail[0].arn}:log-stream:*"]
  }
}

resource "aws_iam_role_policy" "trail_to_logs" {
  count = var.create_cloudtrail ? 1 : 0

  name   = "write-trail-log-group"
  role   = aws_iam_role.trail_to_logs[0].id
  policy = data.aws_iam_policy_document.trail_to_logs[0].json
}

resource "aws_cloudtrail" "kms" {
  #checkov:skip=CKV_AWS_252: Delivery notifications per log file are not needed: alarms come from the CloudWatch Logs copy of the trail (alarms.tf).
  count = var.create_cloudtrail ? 1 : 0

  name                          = local.trail_name
  s3_bucket_name                = aws_s3_bucket.trail[0].id
  kms_key_id                    = aws_kms_key.infra.arn
  is_multi_region_trail         = true
  include_global_service_events = true
  enable_log_file_validation    = true
  enable_logging                = true
  cloud_watch_logs_group_arn    = "${aws_cloudwatch_log_group.trail[0].arn}:*"
  cloud_watch_logs_role_arn     = aws_iam_role.trail_to_logs[0].arn

  # Management events, read and write: KMS Decrypt/GenerateDataKey/ReEncrypt are read-only
  # management events, so "WriteOnly" would lose exactly the calls the audit needs.
  event_selector {
    read_write_type                  = "All"
    include_management_events        = true
    exclude_management_event_sources = []
  }

  depends_on = [
    aws_s3_bucket_policy.trail,
    aws_s3_bucket_object_lock_configuration.trail,
    aws_iam_role_policy.trail_to_logs,
  ]
}

# Optional: the KMS events in CloudTrail Lake as well, for SQL without an Athena table.
resource "aws_cloudtrail_event_data_store" "kms" {
  count = var.create_cloudtrail_lake ? 1 : 0

  name                           = "${var.name}-kms-events"
  retention_period               = var.cloudtrail_lake_retention_days
  multi_region_enabled           = true
  organization_enabled           = false
  termination_protection_enabled = true
  kms_key_id                     = aws_kms_key.infra.arn

  advanced_event_selector {
    name = "KMS management events (token key audit)"

    field_selector {
      field  = "eventCategory"
      equals = ["Management"]
    }
    field_selector {
      field  = "eventSource"
      equals = ["kms.amazonaws.com"]
    }
  }
}
