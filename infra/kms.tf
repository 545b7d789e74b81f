# Customer-managed keys:
#
# * aws_kms_key.tokens["<generation>"] wrap the per-row data keys of token-store (envelope
#   encryption); alias/<name> points at the last of token_key_generations, so new rows are
#   wrapped under it and older generations only unwrap until `token-store rewrap` has moved
#   their rows (README, "Rewrap"). Their policy is the whole access story: no statement
#   names the account root, so no IAM policy in the account can grant use of the keys. The
#   admin role administers them and cannot use them; the service's task role may
#   GenerateDataKey/Decrypt and the rewrap operator role may ReEncrypt, both only with the
#   encryption context token-store sends, {"purpose": "integration-token", "user_id": U,
#   "provider": P}, and only through the KMS interface endpoint (aws:SourceVpce).
# * aws_kms_key.infra encrypts everything around it (RDS storage and its secrets, Secrets
#   Manager entries, log groups, the CloudTrail bucket and trail, the alarm topic). Its
#   policy is the AWS default (account root, delegating to IAM) plus the service principals
#   that encrypt on our behalf.

locals {
  active_token_key_generation = var.token_key_generations[length(var.token_key_generations) - 1]
  active_token_key            = aws_kms_key.tokens[local.active_token_key_generation]
  token_key_arns              = [for generation in var.token_key_generations : aws_kms_key.tokens[generation].arn]

  # Where `token-store rewrap` may move data keys: this module's token keys, plus keys the
  # operators approved by name. The operator role's own policy denies ReEncryptTo on any
  # other key (ecs.tf), whatever that key's policy says.
  rewrap_destination_key_arns = distinct(concat(local.token_key_arns, var.rewrap_destination_key_arns))

  # The conditions every use of a token key carries (src/crypto sends exactly this
  # context): purpose fixed, user_id and provider present, no other context key, and the
  # call made through the KMS interface endpoint of this deployment.
  token_key_use_conditions = [
    { test = "StringEquals", variable = "kms:EncryptionContext:purpose", values = [local.encryption_context_purpose] },
    # Every call names the user and provider, so CloudTrail always says whose token it was.
    { test = "Null", variable = "kms:EncryptionContext:user_id", values = ["false"] },
    { test = "Null", variable = "kms:EncryptionContext:provider", values = ["false"] },
    { test = "ForAllValues:StringEquals", variable = "kms:EncryptionContextKeys", values = ["purpose", "user_id", "provider"] },
    { test = "StringEquals", variable = "aws:SourceVpce", values = [local.kms_vpc_endpoint_id] },
  ]
}

resource "aws_kms_key" "tokens" {
  for_each = toset(var.token_key_generations)

  description              = "${var.name}: wraps per-row data keys of OAuth tokens (envelope encryption), generation ${each.key}"
  key_usage                = "ENCRYPT_DECRYPT"
  customer_master_key_spec = "SYMMETRIC_DEFAULT"
  enable_key_rotation      = true
  rotation_period_in_days  = var.kms_rotation_period_days
  deletion_window_in_days  = var.kms_deletion_window_days
  policy                   = data.aws_iam_policy_document.tokens_key.json
}

# The key was a single resource before token_key_generations existed.
moved {
  from = aws_kms_key.tokens
  to   = aws_kms_key.tokens["1"]
}

# Moved only by adding a generation and applying (README, "Rewrap"): a change made by hand
# (aws kms update-alias) would be undone by the next apply.
resource "aws_kms_alias" "tokens" {
  name          = "alias/${var.name}"
  target_key_id = local.active_token_key.key_id
}

data "aws_iam_policy_document" "tokens_key" {
  #checkov:skip=CKV_AWS_109: A key policy's Resource "*" means this key only; the administration statement names one admin role and excludes every cryptographic action and CreateGrant.
  #checkov:skip=CKV_AWS_111: A key policy's Resource "*" means this key only; write actions are granted to named principals, with encryption-context and VPC-endpoint conditions on every cryptographic one.
  #checkov:skip=CKV_AWS_356: In a key policy Resource must be "*" (it denotes the key the policy is attached to), so there is nothing narrower to name.

  # AWS requires a principal that can manage the key (the key policy lockout safety check
  # refuses a policy its author could not put again). That principal is the admin role,
  # not the account root: with the root here, any IAM principal allowed kms:PutKeyPolicy
  # could give itself Decrypt. What remains (README, "Who can decrypt"): the admin role can
  # still rewrite this policy, which the key-administration alarm reports at once.
  statement {
    sid    = "KeyAdministrationWithoutUse"
    effect = "Allow"
    principals {
      type        = "AWS"
      identifiers = [var.kms_key_admin_role_arn]
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

    dynamic "condition" {
      for_each = local.token_key_use_conditions
      content {
        test     = condition.value.test
        variable = condition.value.variable
        values   = condition.value.values
      }
    }
  }

  # /readyz (the service) and resolving --to-key (rewrap): no context, same endpoint.
  statement {
    sid    = "ServiceAndOperatorDescribeKey"
    effect = "Allow"
    principals {
      type        = "AWS"
      identifiers = [aws_iam_role.task.arn, aws_iam_role.rewrap_operator.arn]
    }
    actions   = ["kms:DescribeKey"]
    resources = ["*"]
    condition {
      test     = "StringEquals"
      variable = "aws:SourceVpce"
      values   = [local.kms_vpc_endpoint_id]
    }
  }

  # `token-store rewrap` re-wraps every data key with ReEncrypt, which KMS authorises twice:
  # ReEncryptFrom on the source key and ReEncryptTo on the destination key. These keys may
  # be either side (one generation to the next). token-store sends the same context on both
  # sides, so the context conditions hold whichever side KMS evaluates them against. KMS has
  # no condition key naming the destination key from the source key's side; the destination
  # is restricted by the operator role's own policy instead (ecs.tf: an explicit Deny of
  # ReEncryptTo on every key but local.rewrap_destination_key_arns).
  statement {
    sid    = "OperatorRewrapFromThisKey"
    effect = "Allow"
    principals {
      type        = "AWS"
      identifiers = [aws_iam_role.rewrap_operator.arn]
    }
    actions   = ["kms:ReEncryptFrom"]
    resources = ["*"]

    dynamic "condition" {
      for_each = local.token_key_use_conditions
      content {
        test     = condition.value.test
        variable = condition.value.variable
        values   = condition.value.values
      }
    }
  }

  statement {
    sid    = "OperatorRewrapToThisKey"
    effect = "Allow"
    principals {
      type        = "AWS"
      identifiers = [aws_iam_role.rewrap_operator.arn]
    }
    actions   = ["kms:ReEncryptTo"]
    resources = ["*"]

    dynamic "condition" {
      for_each = local.token_key_use_conditions
      content {
        test     = condition.value.test
        variable = condition.value.variable
        values   = condition.value.values
      }
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

  # EventBridge rules (alarms.tf) publish to the same encrypted topic.
  statement {
    sid    = "EventBridgePublishesToEncryptedTopic"
    effect = "Allow"
    principals {
      type        = "Service"
      identifiers = ["events.amazonaws.com"]
    }
    actions   = ["kms:GenerateDataKey*", "kms:Decrypt"]
    resources = ["*"]
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }

  # The application database secret (secrets.tf), for whoever Secrets Manager acts for in
  # this account: the service's task role, the execution role, and the rotation Lambda that
  # the serverless application repository creates with a role of its own. This is what the
  # AWS managed aws/secretsmanager key allows, narrowed to that one secret; who may read
  # the secret is still decided by secretsmanager:GetSecretValue permissions.
  statement {
    sid    = "SecretsManagerUsesKeyForTheAppDatabaseSecret"
    effect = "Allow"
    principals {
      type        = "AWS"
      identifiers = ["*"]
    }
    actions   = ["kms:Decrypt", "kms:GenerateDataKey*", "kms:DescribeKey"]
    resources = ["*"]
    condition {
      test     = "StringEquals"
      variable = "kms:CallerAccount"
      values   = [local.account_id]
    }
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["secretsmanager.${local.region}.${local.dns_suffix}"]
    }
    condition {
      test     = "StringLike"
      variable = "kms:EncryptionContext:SecretARN"
      values   = ["arn:${local.partition}:secretsmanager:${local.region}:${local.account_id}:secret:${local.db_app_secret_name}-??????"]
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
