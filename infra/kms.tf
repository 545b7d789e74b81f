# Two customer-managed keys:
#
# * aws_kms_key.tokens wraps the per-row data keys of token-store (envelope encryption). Its
#   policy is the whole access story: no statement delegates to IAM, so no IAM policy in the
#   account can grant its use. Administrators administer it and cannot use it; the service's
#   task role may GenerateDataKey/Decrypt and the rewrap operator role may ReEncrypt, both
#   only with the encryption context token-store sends:
#   {"purpose": "integration-token", "user_id": U, "provider": P}.
# * aws_kms_key.infra encrypts everything around it (RDS storage and its secret, Secrets
#   Manager entries, log groups, the CloudTrail bucket and trail, the alarm topic). Its
#   policy is the AWS default (account root, delegating to IAM) plus the service principals
#   that encrypt on our behalf.

resource "aws_kms_key" "tokens" {
  description              = "${var.name}: wraps per-row data keys of OAuth tokens (envelope encryption)"
  key_usage                = "ENCRYPT_DECRYPT"
  customer_master_key_spec = "SYMMETRIC_DEFAULT"
  enable_key_rotation      = true
  rotation_period_in_days  = var.kms_rotation_period_days
  deletion_window_in_days  = var.kms_deletion_window_days
  policy                   = data.aws_iam_policy_document.tokens_key.json
}

resource "aws_kms_alias" "tokens" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.tokens.key_id
}

data "aws_iam_policy_document" "tokens_key" {
  #checkov:skip=CKV_AWS_109: A key policy's Resource "*" means this key only; the administration statement is scoped to kms_key_admin_arns and excludes every cryptographic action and CreateGrant.
  #checkov:skip=CKV_AWS_111: A key policy's Resource "*" means this key only; write actions are granted to named principals, with encryption-context conditions on every cryptographic one.
  #checkov:skip=CKV_AWS_356: In a key policy Resource must be "*" (it denotes the key the policy is attached to), so there is nothing narrower to name.

  statement {
    sid    = "KeyAdministrationWithoutUse"
    effect = "Allow"
    principals {
      type        = "AWS"
      identifiers = local.key_admin_arns
    }
    # Spelled out rather than kms:Create*/kms:Put*-style wildcards: CreateGrant is left out on
    # purpose (a grant could hand the administrator Decrypt), as is every cryptographic action.
    actions = [
      "kms:CancelKeyDeletion",
      "kms:CreateAlias",
      "kms:DeleteAlias",
      "kms:DescribeKey",
      "kms:DisableKey",
      "kms:DisableKeyRotation",
      "kms:EnableKey",
      "kms:EnableKeyRotation",
      "kms:GetKeyPolicy",
      "kms:GetKeyRotationStatus",
      "kms:ListAliases",
      "kms:ListGrants",
      "kms:ListKeyPolicies",
      "kms:ListKeyRotations",
      "kms:ListResourceTags",
      "kms:PutKeyPolicy",
      "kms:RetireGrant",
      "kms:RevokeGrant",
      "kms:RotateKeyOnDemand",
      "kms:ScheduleKeyDeletion",
      "kms:TagResource",
      "kms:UntagResource",
      "kms:UpdateAlias",
      "kms:UpdateKeyDescription",
    ]
    resources = ["*"]
  }

  statement {
    sid    = "ServiceWrapAndUnwrapIntegrationTokenDataKeys"
    effect = "Allow"
    principals {
      type        = "AWS"
      identifiers = [aws_iam_role.task.arn]
    }
    actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
    resources = ["*"]

    condition {
      test     = "StringEquals"
      variable = "kms:EncryptionContext:purpose"
      values   = [local.encryption_context_purpose]
    }
    # Every call names the user and provider, so CloudTrail always says whose token it was.
    condition {
      test     = "Null"
      variable = "kms:EncryptionContext:user_id"
      values   = ["false"]
    }
    condition {
      test     = "Null"
      variable = "kms:EncryptionContext:provider"
      values   = ["false"]
    }
    condition {
      test     = "ForAllValues:StringEquals"
      variable = "kms:EncryptionContextKeys"
      values   = ["purpose", "user_id", "provider"]
    }
  }

  statement {
    sid    = "ServiceReadiness"
    effect = "Allow"
    principals {
      type        = "AWS"
      identifiers = [aws_iam_role.task.arn, aws_iam_role.rewrap_operator.arn]
    }
    actions   = ["kms:DescribeKey"]
    resources = ["*"]
  }

  # `token-store rewrap --to-key KEY` re-wraps every data key with ReEncrypt: authorised as
  # ReEncryptFrom on the source key and ReEncryptTo on the destination key, each against
  # the context of its side (token-store sends the same context on both). This key can be
  # either side; a key outside this module needs the same statement in its own policy.
  statement {
    sid    = "OperatorRewrapIntegrationTokenDataKeys"
    effect = "Allow"
    principals {
      type        = "AWS"
      identifiers = [aws_iam_role.rewrap_operator.arn]
    }
    actions   = ["kms:ReEncryptFrom", "kms:ReEncryptTo"]
    resources = ["*"]

    condition {
      test     = "StringEquals"
      variable = "kms:EncryptionContext:purpose"
      values   = [local.encryption_context_purpose]
    }
    condition {
      test     = "Null"
      variable = "kms:EncryptionContext:user_id"
      values   = ["false"]
    }
    condition {
      test     = "Null"
      variable = "kms:EncryptionContext:provider"
      values   = ["false"]
    }
  }
}

# ---------------------------------------------------------------------------------------

resource "aws_kms_key" "infra" {
  description             = "${var.name}: encrypts RDS, Secrets Manager entries, logs, CloudTrail and alarms"
  key_usage               = "ENCRYPT_DECRYPT"
  enable_key_rotation     = true
  deletion_window_in_days = var.kms_deletion_window_days
  policy                  = data.aws_iam_policy_document.infra_key.json
}

resource "aws_kms_alias" "infra" {
  name          = "alias/${var.name}-infra"
  target_key_id = aws_kms_key.infra.key_id
}

data "aws_iam_policy_document" "infra_key" {
  #checkov:skip=CKV_AWS_109: The root statement is the AWS default key policy (delegate to IAM in this account); Resource "*" in a key policy means this key.
  #checkov:skip=CKV_AWS_111: Same default root statement; service principals below are scoped by source account/ARN and encryption-context conditions.
  #checkov:skip=CKV_AWS_356: In a key policy Resource must be "*" (it denotes the key the policy is attached to).

  # RDS, Secrets Manager and Performance Insights use this key through grants made with the
  # caller's IAM permissions (kms:ViaService), which this statement makes possible.
  statement {
    sid    = "AccountRootDelegatesToIam"
    effect = "Allow"
    principals {
      type        = "AWS"
      identifiers = [local.account_root_arn]
    }
    actions   = ["kms:*"]
    resources = ["*"]
  }

  statement {
    sid    = "CloudWatchLogsEncryptsLogGroups"
    effect = "Allow"
    principals {
      type        = "Service"
      identifiers = ["logs.${local.region}.${local.dns_suffix}"]
    }
    actions = [
      "kms:Encrypt*",
      "kms:Decrypt*",
      "kms:ReEncrypt*",
      "kms:GenerateDataKey*",
      "kms:Describe*",
    ]
    resources = ["*"]
    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:*"]
    }
  }

  statement {
    sid    = "CloudTrailEncryptsTrailLogs"
    effect = "Allow"
    principals {
      type        = "Service"
      identifiers = ["cloudtrail.amazonaws.com"]
    }
    actions   = ["kms:GenerateDataKey*"]
    resources = ["*"]
    condition {
      test     = "StringEquals"
      variable = "aws:SourceArn"
      values   = [local.trail_arn]
    }
    condition {
      test     = "StringLike"
      variable = "kms:EncryptionContext:aws:cloudtrail:arn"
      values   = ["arn:${local.partition}:cloudtrail:*:${local.account_id}:trail/*"]
    }
  }

  statement {
    sid    = "CloudTrailLakeEncryptsEventDataStore"
    effect = "Allow"
    principals {
      type        = "Service"
      identifiers = ["cloudtrail.amazonaws.com"]
    }
    actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
    resources = ["*"]
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = ["arn:${local.partition}:cloudtrail:${local.region}:${local.account_id}:eventdatastore/*"]
    }
  }

  statement {
    sid    = "CloudTrailDescribesKey"
    effect = "Allow"
    principals {
      type        = "Service"
      identifiers = ["cloudtrail.amazonaws.com"]
    }
    actions   = ["kms:DescribeKey"]
    resources = ["*"]
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }

  # CloudWatch alarms publish to the encrypted SNS topic.
  statement {
    sid    = "CloudWatchAlarmsPublishToEncryptedTopic"
    effect = "Allow"
    principals {
      type        = "Service"
      identifiers = ["cloudwatch.amazonaws.com"]
    }
    actions   = ["kms:GenerateDataKey*", "kms:Decrypt"]
    resources = ["*"]
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}
