# Alarms, all to one encrypted SNS topic (subscribe to it, or add alarm_action_arns):
#
#   5xx rate            ALB + target 5xx as a share of requests (AWS/ApplicationELB)
#   no healthy targets  /readyz failing on every task (database or KMS unreachable)
#   refresh failures    the service's audit events (target token_store::audit, docs/audit.md)
#                       for token.refresh and token.access_token, by outcome:
#                       provider_unavailable (transient), internal (error),
#                       reauthorization_required (terminal: dead grants); and the refresh
#                       module's WARN/ERROR lines (target token_store::refresh): failed
#                       attempts callers did not see, refreshed tokens that were not persisted
#   KMS unavailable     audit events with outcome kms_unavailable
#   KMS throttling      CloudTrail records of kms.amazonaws.com ThrottlingException, and the
#                       account's symmetric KMS request rate against its quota (AWS/Usage)
#   token key changes   DisableKey / ScheduleKeyDeletion / PutKeyPolicy / CreateGrant /
#                       DisableKeyRotation on the token key, and AccessDenied on it
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
  alarm_description   = "No token-store task passes /readyz (database or KMS unreachable, or no task running)."
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

resource "aws_cloudwatch_log_metric_filter" "token_key_changes" {
  count = var.create_cloudtrail ? 1 : 0

  name           = "${var.name}-token-key-changes"
  log_group_name = aws_cloudwatch_log_group.trail[0].name
  pattern        = "{ ($.eventSource = \"kms.amazonaws.com\") && ($.resources[0].ARN = \"${aws_kms_key.tokens.arn}\") && (($.eventName = \"DisableKey\") || ($.eventName = \"ScheduleKeyDeletion\") || ($.eventName = \"PutKeyPolicy\") || ($.eventName = \"CreateGrant\") || ($.eventName = \"DisableKeyRotation\")) }"

  metric_transformation {
    name          = "TokenKeyChanges"
    namespace     = local.metric_namespace
    value         = "1"
    default_value = "0"
    unit          = "Count"
  }
}

resource "aws_cloudwatch_metric_alarm" "token_key_changes" {
  count = var.create_cloudtrail ? 1 : 0

  alarm_name          = "${var.name}-token-key-changes"
  alarm_description   = "The token key was disabled, scheduled for deletion, given a new policy or a grant, or lost automatic rotation."
  namespace           = local.metric_namespace
  metric_name         = aws_cloudwatch_log_metric_filter.token_key_changes[0].metric_transformation[0].name
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
}

resource "aws_cloudwatch_log_metric_filter" "token_key_access_denied" {
  count = var.create_cloudtrail ? 1 : 0

  name           = "${var.name}-token-key-access-denied"
  log_group_name = aws_cloudwatch_log_group.trail[0].name
  pattern        = "{ ($.eventSource = \"kms.amazonaws.com\") && ($.errorCode = \"AccessDenied*\") && ($.resources[0].ARN = \"${aws_kms_key.tokens.arn}\") }"

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
  alarm_description   = "A principal was refused the token key (someone without the service's role or context tried to use it)."
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
