# Alarms, all to one encrypted SNS topic (alarm_subscriptions, or add alarm_action_arns):
#
#   5xx rate            ALB + target 5xx as a share of requests (AWS/ApplicationELB)
#   no healthy targets  /healthz failing on every task (no task running or answering)
#   refresh failures    the service's audit events (target token_store::audit, docs/audit.md)
#                       for token.refresh and token.access_token, by outcome:
#                       provider_unavailable (transient), internal (error),
#                       reauthorization_required (terminal: dead grants); and the refresh
#                       module's WARN/ERROR lines (target token_store::refresh): failed
#                       attempts callers did not see, refreshed tokens that were not persisted
#   KMS / database      audit events with outcome kms_unavailable / database_unavailable
#   KMS throttling      CloudTrail records of kms.amazonaws.com ThrottlingException, and the
#                       account's symmetric KMS request rate against its quota (AWS/Usage)
#   token key denials   AccessDenied on a token key (CloudTrail log filter)
#
# And, through EventBridge rather than the trail's CloudWatch Logs copy (so that stopping
# or changing the trail cannot silence them):
#   audit trail         StopLogging / DeleteTrail / UpdateTrail / PutEventSelectors / ...
#   key administration  PutKeyPolicy / ScheduleKeyDeletion / DisableKey / alias changes /
#                       CreateGrant / DisableKeyRotation on the token keys or the infra key
#   rewrap operator     every AssumeRole of the rewrap operator role
#
# The service writes one JSON object per line (log_format = "json", tracing-subscriber with
# flattened fields), so the metric filters below match fields by name.

locals {
  metric_namespace = "TokenStore/${var.name}"
  alarm_actions    = concat([aws_sns_topic.alarms.arn], var.alarm_action_arns)
  lb_dimensions    = { LoadBalancer = aws_lb.this.arn_suffix }
}

resource "aws_sns_topic" "alarms" {
  name              = "${var.name}-alarms"
  kms_master_key_id = aws_kms_key.infra.arn
}

# Replaces the default topic policy: the account's own principals (IAM decides), CloudWatch
# alarms of this account, and this module's EventBridge rules, nobody else.
data "aws_iam_policy_document" "alarm_topic" {
  statement {
    sid = "AccountManagesTheTopic"
    actions = [
      "sns:GetTopicAttributes",
      "sns:SetTopicAttributes",
      "sns:AddPermission",
      "sns:RemovePermission",
      "sns:DeleteTopic",
      "sns:Subscribe",
      "sns:ListSubscriptionsByTopic",
      "sns:Publish",
    ]
    principals {
      type        = "AWS"
      identifiers = [local.account_root_arn]
    }
    resources = [aws_sns_topic.alarms.arn]
  }

  statement {
    sid     = "CloudWatchAlarmsPublish"
    actions = ["sns:Publish"]
    principals {
      type        = "Service"
      identifiers = ["cloudwatch.amazonaws.com"]
    }
    resources = [aws_sns_topic.alarms.arn]
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = ["arn:${local.partition}:cloudwatch:${local.region}:${local.account_id}:alarm:*"]
    }
  }

  statement {
    sid     = "EventBridgeRulesPublish"
    actions = ["sns:Publish"]
    principals {
      type        = "Service"
      identifiers = ["events.amazonaws.com"]
    }
    resources = [aws_sns_topic.alarms.arn]
    condition {
      test     = "ArnEquals"
      variable = "aws:SourceArn"
      values   = [for rule in aws_cloudwatch_event_rule.audit : rule.arn]
    }
  }
}

resource "aws_sns_topic_policy" "alarms" {
  arn    = aws_sns_topic.alarms.arn
  policy = data.aws_iam_policy_document.alarm_topic.json
}

# Who gets the alarms. An email subscription stays pending until its recipient confirms it.
resource "aws_sns_topic_subscription" "alarms" {
  for_each = { for s in var.alarm_subscriptions : "${s.protocol}:${s.endpoint}" => s }

  topic_arn = aws_sns_topic.alarms.arn
  protocol  = each.value.protocol
  endpoint  = each.value.endpoint
}

# ---------------------------------------------------------------------------------------
# Load balancer

resource "aws_cloudwatch_metric_alarm" "http_5xx_rate" {
  alarm_name          = "${var.name}-5xx-rate"
  alarm_description   = "More than ${var.alarm_5xx_rate_percent}% of requests to token-store answered 5xx (ALB or tasks) over 5 minutes."
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.alarm_5xx_rate_percent
  evaluation_periods  = 1
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions

  metric_query {
    id          = "rate"
    expression  = "IF(FILL(requests, 0) > 0, 100 * (FILL(target5xx, 0) + FILL(elb5xx, 0)) / requests, 0)"
    label       = "5xx share of requests (%)"
    return_data = true
  }

  metric_query {
    id = "target5xx"
    metric {
      namespace   = "AWS/ApplicationELB"
      metric_name = "HTTPCode_Target_5XX_Count"
      dimensions  = local.lb_dimensions
      stat        = "Sum"
      period      = 300
    }
  }

  metric_query {
    id = "elb5xx"
    metric {
      namespace   = "AWS/ApplicationELB"
      metric_name = "HTTPCode_ELB_5XX_Count"
      dimensions  = local.lb_dimensions
      stat        = "Sum"
      period      = 300
    }
  }

  metric_query {
    id = "requests"
    metric {
      namespace   = "AWS/ApplicationELB"
      metric_name = "RequestCount"
      dimensions  = local.lb_dimensions
      stat        = "Sum"
      period      = 300
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "no_healthy_targets" {
  alarm_name          = "${var.name}-no-healthy-targets"
  alarm_description   = "No token-store task passes the /healthz health check (no task running, or none answering)."
  namespace           = "AWS/ApplicationELB"
  metric_name         = "HealthyHostCount"
  statistic           = "Minimum"
  period              = 60
  evaluation_periods  = 3
  comparison_operator = "LessThanThreshold"
  threshold           = 1
  treat_missing_data  = "breaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions

  dimensions = {
    LoadBalancer = aws_lb.this.arn_suffix
    TargetGroup  = aws_lb_target_group.this.arn_suffix
  }
}

# ---------------------------------------------------------------------------------------
# Refresh failures and KMS, from the service's audit events

# One metric, dimension Outcome = the audit event's outcome (an error code of the API:
# provider_unavailable, reauthorization_required, internal, ...; low cardinality).
resource "aws_cloudwatch_log_metric_filter" "refresh_failures" {
  name           = "${var.name}-refresh-failures"
  log_group_name = aws_cloudwatch_log_group.service.name
  pattern        = "{ ($.target = \"token_store::audit\") && (($.event = \"token.refresh\") || ($.event = \"token.access_token\")) && ($.outcome != \"ok\") }"

  metric_transformation {
    name       = "RefreshFailures"
    namespace  = local.metric_namespace
    value      = "1"
    unit       = "Count"
    dimensions = { Outcome = "$.outcome" }
  }
}

locals {
  refresh_alarms = {
    transient = {
      outcome     = "provider_unavailable"
      threshold   = var.alarm_refresh_transient_failures
      period      = 300
      description = "Refreshes failing with provider_unavailable (provider 5xx/429/timeouts): callers get 503 once their cached access tokens expire."
    }
    error = {
      outcome     = "internal"
      threshold   = var.alarm_refresh_errors
      period      = 300
      description = "Refreshes failing with internal errors (unexpected provider responses or a bug): see the service's logs."
    }
    terminal = {
      outcome     = "reauthorization_required"
      threshold   = var.alarm_refresh_terminal_failures
      period      = 900
      description = "Many grants found dead (invalid_grant/invalid_client): a few are users revoking consent; many point at a broken or rotated OAuth client secret."
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "refresh_failures" {
  for_each = local.refresh_alarms

  alarm_name          = "${var.name}-refresh-${each.key}"
  alarm_description   = each.value.description
  namespace           = local.metric_namespace
  metric_name         = aws_cloudwatch_log_metric_filter.refresh_failures.metric_transformation[0].name
  dimensions          = { Outcome = each.value.outcome }
  statistic           = "Sum"
  period              = each.value.period
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = each.value.threshold
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

# Every failed attempt at the provider, also those the caller never saw (a still-valid access
# token is served while the provider is down): the refresh module's own WARN lines (provider
# unavailable or rejecting the grant, lock timeouts). Its ERROR lines mean a refreshed token
# could not be persisted: with a rotating provider, a refresh token may be lost.
resource "aws_cloudwatch_log_metric_filter" "refresh_attempts" {
  for_each = { RefreshAttemptFailures = "WARN", RefreshPersistErrors = "ERROR" }

  name           = "${var.name}-${lower(each.value)}-refresh"
  log_group_name = aws_cloudwatch_log_group.service.name
  pattern        = "{ ($.target = \"token_store::refresh\") && ($.level = \"${each.value}\") }"

  metric_transformation {
    name          = each.key
    namespace     = local.metric_namespace
    value         = "1"
    default_value = "0"
    unit          = "Count"
  }
}

resource "aws_cloudwatch_metric_alarm" "refresh_attempts" {
  for_each = {
    RefreshAttemptFailures = {
      alarm       = "refresh-attempt-failures"
      threshold   = var.alarm_refresh_attempt_failures
      description = "Refresh attempts failing at the provider (or timing out on the refresh lock), including those hidden from callers by a still-valid token."
    }
    RefreshPersistErrors = {
      alarm       = "refresh-persist-errors"
      threshold   = 0
      description = "A refreshed token could not be persisted (token_store::refresh ERROR): with a rotating provider the new refresh token may be lost; read the service's logs now."
    }
  }

  alarm_name          = "${var.name}-${each.value.alarm}"
  alarm_description   = each.value.description
  namespace           = local.metric_namespace
  metric_name         = aws_cloudwatch_log_metric_filter.refresh_attempts[each.key].metric_transformation[0].name
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = each.value.threshold
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

resource "aws_cloudwatch_log_metric_filter" "database_unavailable" {
  name           = "${var.name}-database-unavailable"
  log_group_name = aws_cloudwatch_log_group.service.name
  pattern        = "{ ($.target = \"token_store::audit\") && ($.outcome = \"database_unavailable\") }"

  metric_transformation {
    name          = "DatabaseUnavailable"
    namespace     = local.metric_namespace
    value         = "1"
    default_value = "0"
    unit          = "Count"
  }
}

# The health check no longer asks the database (/healthz), so a database outage shows here
# and in the 5xx rate rather than as unhealthy targets.
resource "aws_cloudwatch_metric_alarm" "database_unavailable" {
  alarm_name          = "${var.name}-database-unavailable"
  alarm_description   = "Token operations failed because PostgreSQL was unreachable, refusing connections (e.g. a rotated password not yet re-read) or too slow (database_unavailable)."
  namespace           = local.metric_namespace
  metric_name         = aws_cloudwatch_log_metric_filter.database_unavailable.metric_transformation[0].name
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.alarm_database_unavailable
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

resource "aws_cloudwatch_log_metric_filter" "kms_unavailable" {
  name           = "${var.name}-kms-unavailable"
  log_group_name = aws_cloudwatch_log_group.service.name
  pattern        = "{ ($.target = \"token_store::audit\") && ($.outcome = \"kms_unavailable\") }"

  metric_transformation {
    name          = "KmsUnavailable"
    namespace     = local.metric_namespace
    value         = "1"
    default_value = "0"
    unit          = "Count"
  }
}

resource "aws_cloudwatch_metric_alarm" "kms_unavailable" {
  alarm_name          = "${var.name}-kms-unavailable"
  alarm_description   = "Token operations failed because KMS was unreachable, throttling or refusing (kms_unavailable)."
  namespace           = local.metric_namespace
  metric_name         = aws_cloudwatch_log_metric_filter.kms_unavailable.metric_transformation[0].name
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.alarm_kms_unavailable
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

# ---------------------------------------------------------------------------------------
# KMS, from CloudTrail and AWS/Usage

resource "aws_cloudwatch_log_metric_filter" "kms_throttling" {
  count = var.create_cloudtrail ? 1 : 0

  name           = "${var.name}-kms-throttling"
  log_group_name = aws_cloudwatch_log_group.trail[0].name
  pattern        = "{ ($.eventSource = \"kms.amazonaws.com\") && ($.errorCode = \"ThrottlingException\") }"

  metric_transformation {
    name          = "KmsThrottlingExceptions"
    namespace     = local.metric_namespace
    value         = "1"
    default_value = "0"
    unit          = "Count"
  }
}

resource "aws_cloudwatch_metric_alarm" "kms_throttling" {
  count = var.create_cloudtrail ? 1 : 0

  alarm_name          = "${var.name}-kms-throttling"
  alarm_description   = "KMS throttled requests in this account (the request-rate quota is shared by every caller in the account and region)."
  namespace           = local.metric_namespace
  metric_name         = aws_cloudwatch_log_metric_filter.kms_throttling[0].metric_transformation[0].name
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.alarm_kms_throttles
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

# Before throttling starts: symmetric cryptographic calls per second against the quota.
resource "aws_cloudwatch_metric_alarm" "kms_quota" {
  alarm_name          = "${var.name}-kms-request-quota"
  alarm_description   = "Symmetric KMS cryptographic requests above ${var.alarm_kms_quota_percent}% of the account's per-second quota in this region."
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.alarm_kms_quota_percent
  evaluation_periods  = 3
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions

  metric_query {
    id          = "utilisation"
    expression  = "100 * (calls / PERIOD(calls)) / SERVICE_QUOTA(calls)"
    label       = "KMS symmetric request rate (% of quota)"
    return_data = true
  }

  metric_query {
    id = "calls"
    metric {
      namespace   = "AWS/Usage"
      metric_name = "CallCount"
      stat        = "Sum"
      period      = 60
      dimensions = {
        Service  = "KMS"
        Type     = "API"
        Resource = "CryptographicOperationsSymmetric"
        Class    = "None"
      }
    }
  }
}

resource "aws_cloudwatch_log_metric_filter" "token_key_access_denied" {
  count = var.create_cloudtrail ? 1 : 0

  name           = "${var.name}-token-key-access-denied"
  log_group_name = aws_cloudwatch_log_group.trail[0].name
  pattern        = "{ ($.eventSource = \"kms.amazonaws.com\") && ($.errorCode = \"AccessDenied*\") && (${join(" || ", [for arn in local.token_key_arns : "($.resources[0].ARN = \"${arn}\")"])}) }"

  metric_transformation {
    name          = "TokenKeyAccessDenied"
    namespace     = local.metric_namespace
    value         = "1"
    default_value = "0"
    unit          = "Count"
  }
}

resource "aws_cloudwatch_metric_alarm" "token_key_access_denied" {
  count = var.create_cloudtrail ? 1 : 0

  alarm_name          = "${var.name}-token-key-access-denied"
  alarm_description   = "A principal was refused a token key (someone without the service's role, context or VPC endpoint tried to use it). Refused calls from other accounts are logged in their account, not here."
  namespace           = local.metric_namespace
  metric_name         = aws_cloudwatch_log_metric_filter.token_key_access_denied[0].metric_transformation[0].name
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
}

# ---------------------------------------------------------------------------------------
# EventBridge: CloudTrail management events, matched as they happen, straight to the topic.
# They do not go through this module's trail bucket, its CloudWatch Logs copy or a metric
# filter, so stopping or rewiring the trail does not silence them; the StopLogging or
# DeleteTrail call itself is the event that alarms. (EventBridge receives "AWS API Call via
# CloudTrail" events while a trail with logging enabled exists in the account and region:
# with this trail stopped, an organisation trail keeps them coming; README, "Audit trail".)

locals {
  # The token keys, the infra key (it encrypts the trail and the secrets) and their aliases.
  audited_kms_arns = concat(
    local.token_key_arns,
    [aws_kms_key.infra.arn, aws_kms_alias.tokens.arn, aws_kms_alias.infra.arn],
  )

  audit_event_rules = {
    trail-tampering = {
      description = "The audit trail was stopped, deleted or changed (what it records included)."
      state       = "ENABLED"
      pattern = {
        source      = ["aws.cloudtrail"]
        detail-type = ["AWS API Call via CloudTrail"]
        detail = {
          eventSource = ["cloudtrail.amazonaws.com"]
          eventName = [
            "StopLogging",
            "DeleteTrail",
            "UpdateTrail",
            "PutEventSelectors",
            "PutInsightSelectors",
            "DeleteEventDataStore",
            "UpdateEventDataStore",
            "StopEventDataStoreIngestion",
          ]
        }
      }
    }
    key-administration = {
      description = "A token key or the infra key got a new policy, a grant or an alias change, or was disabled or scheduled for deletion."
      state       = "ENABLED"
      pattern = {
        source      = ["aws.kms"]
        detail-type = ["AWS API Call via CloudTrail"]
        detail = {
          eventSource = ["kms.amazonaws.com"]
          eventName = [
            "PutKeyPolicy",
            "ScheduleKeyDeletion",
            "DisableKey",
            "DisableKeyRotation",
            "CreateGrant",
            "CreateAlias",
            "DeleteAlias",
            "UpdateAlias",
          ]
          resources = { ARN = local.audited_kms_arns }
        }
      }
    }
    # AssumeRole is a read-only management event: the rule must ask for those explicitly.
    rewrap-operator = {
      description = "Someone (or the rewrap task) assumed the rewrap operator role, which can ReEncrypt every data key."
      state       = "ENABLED_WITH_ALL_CLOUDTRAIL_MANAGEMENT_EVENTS"
      pattern = {
        source      = ["aws.sts"]
        detail-type = ["AWS API Call via CloudTrail"]
        detail = {
          eventSource       = ["sts.amazonaws.com"]
          eventName         = ["AssumeRole"]
          requestParameters = { roleArn = [aws_iam_role.rewrap_operator.arn] }
        }
      }
    }
  }
}

resource "aws_cloudwatch_event_rule" "audit" {
  for_each = local.audit_event_rules

  name          = "${var.name}-${each.key}"
  description   = each.value.description
  state         = each.value.state
  event_pattern = jsonencode(each.value.pattern)
}

resource "aws_cloudwatch_event_target" "audit" {
  for_each = local.audit_event_rules

  rule      = aws_cloudwatch_event_rule.audit[each.key].name
  target_id = "alarm-topic"
  arn       = aws_sns_topic.alarms.arn
}
