# Offline plan+apply of the whole module against a mocked AWS provider (terraform >= 1.7):
# evaluates every expression, for_each and conditional, checks the provider's own argument
# validation (ARNs, enums), and asserts on what the service will see in its environment and
# on the guarantees of infra/README.md: who may use the token keys and under which
# conditions, where rewrap may move data keys, the locked audit bucket and the EventBridge
# alarms, the health check, the connection budget. The mocked aws_iam_policy_document
# renders no JSON, so policy assertions read the documents' statements as configured.
# Nothing is created anywhere. scripts/infra-check.sh runs it when terraform and a local
# provider mirror are available:  terraform init -backend=false && terraform test

mock_provider "aws" {
  mock_data "aws_caller_identity" {
    defaults = { account_id = "123456789012", arn = "arn:aws:iam::123456789012:user/ci", user_id = "AIDAEXAMPLE" }
  }
  mock_data "aws_region" {
    defaults = { name = "eu-west-1" }
  }
  mock_data "aws_partition" {
    defaults = { partition = "aws", dns_suffix = "amazonaws.com" }
  }
  mock_data "aws_iam_policy_document" {
    defaults = { json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}" }
  }

  # Computed ARNs must look like ARNs: the provider validates alarm actions, policies...
  mock_resource "aws_sns_topic" {
    defaults = { arn = "arn:aws:sns:eu-west-1:123456789012:token-store-alarms" }
  }
  mock_resource "aws_kms_key" {
    defaults = { arn = "arn:aws:kms:eu-west-1:123456789012:key/11111111-2222-3333-4444-555555555555", key_id = "11111111-2222-3333-4444-555555555555" }
  }
  mock_resource "aws_kms_alias" {
    defaults = { arn = "arn:aws:kms:eu-west-1:123456789012:alias/token-store" }
  }
  mock_resource "aws_iam_role" {
    defaults = { arn = "arn:aws:iam::123456789012:role/token-store-x" }
  }
  mock_resource "aws_cloudwatch_log_group" {
    defaults = { arn = "arn:aws:logs:eu-west-1:123456789012:log-group:/x" }
  }
  mock_resource "aws_s3_bucket" {
    defaults = { arn = "arn:aws:s3:::token-store-trail" }
  }
  mock_resource "aws_secretsmanager_secret" {
    defaults = { arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:token-store/x" }
  }
  mock_resource "aws_lb" {
    defaults = { arn = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:loadbalancer/app/token-store/1", arn_suffix = "app/token-store/1" }
  }
  mock_resource "aws_lb_target_group" {
    defaults = { arn = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/token-store/1", arn_suffix = "targetgroup/token-store/1" }
  }
  mock_resource "aws_lb_listener" {
    defaults = { arn = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:listener/app/token-store/1/2" }
  }
  mock_resource "aws_ecs_cluster" {
    defaults = { arn = "arn:aws:ecs:eu-west-1:123456789012:cluster/token-store" }
  }
  mock_resource "aws_ecs_task_definition" {
    defaults = { arn = "arn:aws:ecs:eu-west-1:123456789012:task-definition/token-store:1" }
  }
  mock_resource "aws_cloudtrail" {
    defaults = { arn = "arn:aws:cloudtrail:eu-west-1:123456789012:trail/token-store-kms" }
  }
  mock_resource "aws_cloudtrail_event_data_store" {
    defaults = { arn = "arn:aws:cloudtrail:eu-west-1:123456789012:eventdatastore/x" }
  }
  mock_resource "aws_vpc_endpoint" {
    defaults = { id = "vpce-0module0000000000" }
  }
  mock_resource "aws_cloudwatch_event_rule" {
    defaults = { arn = "arn:aws:events:eu-west-1:123456789012:rule/token-store-x" }
  }
  mock_resource "aws_serverlessapplicationrepository_cloudformation_stack" {
    defaults = { outputs = { RotationLambdaARN = "arn:aws:lambda:eu-west-1:123456789012:function:token-store-db-app-rotation" } }
  }
  mock_resource "aws_db_instance" {
    defaults = {
      address            = "token-store.abc.eu-west-1.rds.amazonaws.com"
      port               = 5432
      master_user_secret = [{ secret_arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:rds!db-1", kms_key_id = "k", secret_status = "active" }]
    }
  }
}

variables {
  vpc_id                    = "vpc-0123456789abcdef0"
  private_subnet_ids        = ["subnet-a", "subnet-b"]
  certificate_arn           = "arn:aws:acm:eu-west-1:123456789012:certificate/x"
  container_image           = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/token-store@sha256:00"
  client_security_group_ids = ["sg-caller"]
  kms_key_admin_role_arn    = "arn:aws:iam::123456789012:role/token-store-key-admin"
}

run "defaults" {
  command = apply

  # --- What the service sees ---------------------------------------------------------
  assert {
    condition = {
      for e in jsondecode(aws_ecs_task_definition.service.container_definitions)[0].environment : e.name => e.value
      if contains(["TOKEN_STORE_SERVER__LOG_FORMAT", "TOKEN_STORE_SERVER__LISTEN", "TOKEN_STORE_SERVER__METRICS_LISTEN", "TOKEN_STORE_KMS__KEY_ID", "TOKEN_STORE_DATABASE__PASSWORD_SECRET_ARN"], e.name)
      } == {
      TOKEN_STORE_SERVER__LOG_FORMAT            = "json"
      TOKEN_STORE_SERVER__LISTEN                = "0.0.0.0:8080"
      TOKEN_STORE_SERVER__METRICS_LISTEN        = "0.0.0.0:9090"
      TOKEN_STORE_KMS__KEY_ID                   = "arn:aws:kms:eu-west-1:123456789012:alias/token-store"
      TOKEN_STORE_DATABASE__PASSWORD_SECRET_ARN = aws_secretsmanager_secret.db_app.arn
    }
    error_message = "the service gets JSON logs, the API and metrics listen addresses, the key alias and the ARN of its database secret"
  }
  assert {
    condition     = startswith([for e in jsondecode(aws_ecs_task_definition.service.container_definitions)[0].environment : e.value if e.name == "TOKEN_STORE_DATABASE__URL"][0], "postgres://token_store_service@token-store.abc.eu-west-1.rds.amazonaws.com:5432/token_store?sslmode=verify-full")
    error_message = "the service connects as token_store_service, a member of token_store_app (not the master user), no password in the URL, TLS verified"
  }
  assert {
    condition     = length([for s in jsondecode(aws_ecs_task_definition.service.container_definitions)[0].secrets : s if s.name == "PGPASSWORD" || s.name == "TOKEN_STORE_DATABASE__URL"]) == 0
    error_message = "no database password reaches the service through its environment: it reads the rotated secret itself"
  }
  assert {
    condition     = toset([for p in jsondecode(aws_ecs_task_definition.service.container_definitions)[0].portMappings : p.containerPort]) == toset([8080, 9090])
    error_message = "the task exposes the API port and the metrics port"
  }
  assert {
    condition     = aws_lb_target_group.this.health_check[0].path == "/healthz" && aws_lb_target_group.this.port == 8080
    error_message = "the ALB health check is the shallow /healthz on the API port, never /readyz"
  }
  assert {
    condition     = aws_vpc_security_group_egress_rule.alb_to_service.from_port == 8080 && aws_vpc_security_group_egress_rule.alb_to_service.to_port == 8080 && length(aws_vpc_security_group_ingress_rule.service_metrics_from_scrapers) == 0
    error_message = "the ALB reaches only the API port; nothing reaches the metrics port without metrics_scraper_security_group_ids"
  }

  # --- migrate and rewrap ------------------------------------------------------------
  assert {
    condition = (
      jsondecode(aws_ecs_task_definition.migrate.container_definitions)[0].command == ["migrate", "--config", "/etc/token-store/token-store.toml"]
      && jsondecode(aws_ecs_task_definition.migrate.container_definitions)[0].secrets == [{ name = "PGPASSWORD", valueFrom = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:rds!db-1:password::" }]
      && startswith([for e in jsondecode(aws_ecs_task_definition.migrate.container_definitions)[0].environment : e.value if e.name == "TOKEN_STORE_DATABASE__URL"][0], "postgres://token_store@")
      && aws_ecs_task_definition.migrate.task_role_arn == null
    )
    error_message = "migrations run as the RDS master user, in a task with no AWS role"
  }
  assert {
    condition = (
      jsondecode(aws_ecs_task_definition.rewrap.container_definitions)[0].command == ["rewrap", "--config", "/etc/token-store/token-store.toml", "--to-key", "arn:aws:kms:eu-west-1:123456789012:alias/token-store"]
      && jsondecode(aws_ecs_task_definition.rewrap.container_definitions)[0].secrets == [{ name = "PGPASSWORD", valueFrom = "${aws_secretsmanager_secret.db_app.arn}:password::" }]
    )
    error_message = "the rewrap task moves data keys to the key alias/<name> points at, as token_store_service"
  }

  # --- Database credentials ------------------------------------------------------------
  assert {
    condition = (
      aws_secretsmanager_secret_rotation.db_app.rotation_rules[0].automatically_after_days == 30
      && aws_secretsmanager_secret_rotation.db_app.rotate_immediately == false
      && aws_secretsmanager_secret_rotation.db_app.rotation_lambda_arn == "arn:aws:lambda:eu-west-1:123456789012:function:token-store-db-app-rotation"
      && endswith(aws_serverlessapplicationrepository_cloudformation_stack.db_app_rotation.application_id, "/SecretsManagerRDSPostgreSQLRotationSingleUser")
    )
    error_message = "the app role's secret is rotated by AWS's single-user PostgreSQL rotation function"
  }
  assert {
    condition = anytrue([
      for s in data.aws_iam_policy_document.task.statement :
      s.sid == "ReadTheAppDatabaseSecret" && s.actions == toset(["secretsmanager:GetSecretValue"]) && s.resources == toset([aws_secretsmanager_secret.db_app.arn])
    ])
    error_message = "the task role may read exactly the app database secret"
  }

  # --- The task role's trust -------------------------------------------------------------
  assert {
    condition = anytrue([
      for c in one(data.aws_iam_policy_document.ecs_tasks_assume.statement).condition :
      c.test == "ArnLike" && c.variable == "aws:SourceArn" && toset(c.values) == toset(["arn:aws:ecs:eu-west-1:123456789012:*"])
      ]) && anytrue([
      for c in one(data.aws_iam_policy_document.ecs_tasks_assume.statement).condition :
      c.test == "StringEquals" && c.variable == "aws:SourceAccount" && toset(c.values) == toset(["123456789012"])
    ])
    error_message = "task roles trust ECS tasks of this account and region only (aws:SourceAccount, aws:SourceArn)"
  }

  # --- The token key policy ----------------------------------------------------------------
  assert {
    condition = alltrue([
      for s in data.aws_iam_policy_document.tokens_key.statement :
      alltrue([for p in s.principals : !contains(p.identifiers, "arn:aws:iam::123456789012:root")])
    ])
    error_message = "no token key statement names the account root (IAM cannot grant use of the key)"
  }
  assert {
    condition = anytrue([
      for s in data.aws_iam_policy_document.tokens_key.statement :
      s.sid == "KeyAdministrationWithoutUse"
      && one(s.principals).identifiers == toset(["arn:aws:iam::123456789012:role/token-store-key-admin"])
      && length(setintersection(s.actions, toset(["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:ReEncryptFrom", "kms:ReEncryptTo", "kms:CreateGrant"]))) == 0
      && contains(s.actions, "kms:PutKeyPolicy")
    ])
    error_message = "the named admin role administers the key (PutKeyPolicy included, as AWS requires) and can neither use it nor grant it"
  }
  assert {
    condition = alltrue([
      for s in data.aws_iam_policy_document.tokens_key.statement :
      anytrue([for c in s.condition : c.test == "StringEquals" && c.variable == "aws:SourceVpce" && toset(c.values) == toset(["vpce-0module0000000000"])])
      if s.sid != "KeyAdministrationWithoutUse"
    ])
    error_message = "every use of the token key (service and operator) must come through the KMS interface endpoint"
  }
  assert {
    condition = length([
      for s in data.aws_iam_policy_document.tokens_key.statement : s
      if contains(["ServiceWrapAndUnwrapIntegrationTokenDataKeys", "OperatorRewrapFromThisKey", "OperatorRewrapToThisKey"], s.sid)
      && anytrue([for c in s.condition : c.test == "ForAllValues:StringEquals" && c.variable == "kms:EncryptionContextKeys" && toset(c.values) == toset(["purpose", "user_id", "provider"])])
      && anytrue([for c in s.condition : c.test == "Null" && c.variable == "kms:EncryptionContext:user_id" && toset(c.values) == toset(["false"])])
      && anytrue([for c in s.condition : c.test == "Null" && c.variable == "kms:EncryptionContext:provider" && toset(c.values) == toset(["false"])])
      && anytrue([for c in s.condition : c.test == "StringEquals" && c.variable == "kms:EncryptionContext:purpose" && toset(c.values) == toset(["integration-token"])])
    ]) == 3
    error_message = "GenerateDataKey/Decrypt, ReEncryptFrom and ReEncryptTo all require exactly the service's encryption-context keys"
  }
  assert {
    condition = toset(flatten([
      for s in data.aws_iam_policy_document.tokens_key.statement : [for p in s.principals : tolist(p.identifiers)]
      if length(setintersection(s.actions, toset(["kms:Decrypt", "kms:GenerateDataKey"]))) > 0
    ])) == toset([aws_iam_role.task.arn])
    error_message = "only the task role is allowed Decrypt/GenerateDataKey"
  }

  # --- Rewrap destinations and the operator role -------------------------------------------
  assert {
    condition = anytrue([
      for s in data.aws_iam_policy_document.rewrap_operator.statement :
      s.effect == "Deny" && s.actions == toset(["kms:ReEncryptTo"]) && s.not_resources == toset([aws_kms_key.tokens["1"].arn])
      ]) && anytrue([
      for s in data.aws_iam_policy_document.rewrap_operator.statement :
      s.effect == "Deny" && contains(s.actions, "kms:Decrypt") && contains(s.actions, "kms:CreateGrant") && s.resources == toset(["*"])
    ])
    error_message = "the operator role is denied ReEncryptTo on every key but the approved ones, and Decrypt/CreateGrant everywhere"
  }
  assert {
    condition     = aws_iam_role.rewrap_operator.max_session_duration <= 3600
    error_message = "operator sessions last an hour at most"
  }

  # --- Audit trail and alarms --------------------------------------------------------------
  assert {
    condition = (
      aws_s3_bucket.trail[0].object_lock_enabled == true
      && aws_s3_bucket_object_lock_configuration.trail[0].rule[0].default_retention[0].mode == "COMPLIANCE"
      && aws_s3_bucket_object_lock_configuration.trail[0].rule[0].default_retention[0].days == 365
    )
    error_message = "the trail bucket is locked in compliance mode for cloudtrail_object_lock_days"
  }
  assert {
    condition = length(setsubtract(
      toset(["StopLogging", "DeleteTrail", "UpdateTrail", "PutEventSelectors"]),
      toset(jsondecode(aws_cloudwatch_event_rule.audit["trail-tampering"].event_pattern).detail.eventName),
    )) == 0 && jsondecode(aws_cloudwatch_event_rule.audit["trail-tampering"].event_pattern).detail-type == ["AWS API Call via CloudTrail"]
    error_message = "stopping, deleting or changing the trail is matched by EventBridge"
  }
  assert {
    condition = length(setsubtract(
      toset(["PutKeyPolicy", "ScheduleKeyDeletion", "DisableKey", "CreateAlias", "DeleteAlias", "UpdateAlias"]),
      toset(jsondecode(aws_cloudwatch_event_rule.audit["key-administration"].event_pattern).detail.eventName),
    )) == 0 && contains(jsondecode(aws_cloudwatch_event_rule.audit["key-administration"].event_pattern).detail.resources.ARN, aws_kms_key.tokens["1"].arn)
    error_message = "key policy, deletion, disabling and alias changes of the token key are matched by EventBridge"
  }
  assert {
    condition = (
      aws_cloudwatch_event_rule.audit["rewrap-operator"].state == "ENABLED_WITH_ALL_CLOUDTRAIL_MANAGEMENT_EVENTS"
      && jsondecode(aws_cloudwatch_event_rule.audit["rewrap-operator"].event_pattern).detail.eventName == ["AssumeRole"]
      && jsondecode(aws_cloudwatch_event_rule.audit["rewrap-operator"].event_pattern).detail.requestParameters.roleArn == [aws_iam_role.rewrap_operator.arn]
    )
    error_message = "every AssumeRole of the rewrap operator role is matched (a read-only event: the rule must ask for those)"
  }
  assert {
    condition     = alltrue([for name, target in aws_cloudwatch_event_target.audit : target.arn == aws_sns_topic.alarms.arn]) && length(aws_cloudwatch_event_target.audit) == 3
    error_message = "every audit rule publishes to the alarm topic"
  }
  assert {
    condition = anytrue([
      for s in data.aws_iam_policy_document.alarm_topic.statement :
      contains(flatten([for p in s.principals : tolist(p.identifiers)]), "events.amazonaws.com") && s.actions == toset(["sns:Publish"])
    ])
    error_message = "the topic policy lets EventBridge publish"
  }
  assert {
    condition     = length(aws_sns_topic_subscription.alarms) == 0
    error_message = "no subscription unless alarm_subscriptions asks"
  }

  # --- Network, scaling ------------------------------------------------------------------------
  assert {
    condition     = length(aws_vpc_endpoint.kms) == 1 && aws_vpc_endpoint.kms[0].private_dns_enabled && aws_vpc_endpoint.kms[0].service_name == "com.amazonaws.eu-west-1.kms" && length(aws_vpc_endpoint.secretsmanager) == 0
    error_message = "without kms_vpc_endpoint_id the module creates the KMS interface endpoint (private DNS); Secrets Manager's only on request"
  }
  assert {
    condition     = aws_appautoscaling_target.service.min_capacity == 2 && aws_appautoscaling_target.service.max_capacity == 6 && aws_appautoscaling_policy.cpu.target_tracking_scaling_policy_configuration[0].predefined_metric_specification[0].predefined_metric_type == "ECSServiceAverageCPUUtilization"
    error_message = "the service scales on CPU between autoscaling_min_tasks and autoscaling_max_tasks"
  }
  assert {
    condition     = length(aws_cloudtrail.kms) == 1 && length(aws_cloudtrail_event_data_store.kms) == 0
    error_message = "trail by default, CloudTrail Lake only on request"
  }
}

run "platform_endpoints_generations_and_subscriptions" {
  command = apply

  variables {
    kms_vpc_endpoint_id                = "vpce-0platform000000000"
    create_secretsmanager_vpc_endpoint = true
    metrics_scraper_security_group_ids = ["sg-prometheus"]
    token_key_generations              = ["1", "2"]
    rewrap_destination_key_arns        = ["arn:aws:kms:eu-west-1:210987654321:key/99999999-8888-7777-6666-555555555555"]
    alarm_subscriptions                = [{ protocol = "email", endpoint = "oncall@example.com" }]
  }

  assert {
    condition = length(aws_vpc_endpoint.kms) == 0 && alltrue([
      for s in data.aws_iam_policy_document.tokens_key.statement :
      anytrue([for c in s.condition : c.variable == "aws:SourceVpce" && toset(c.values) == toset(["vpce-0platform000000000"])])
      if s.sid != "KeyAdministrationWithoutUse"
    ])
    error_message = "with the platform's KMS endpoint, the key policy requires that one and the module creates none"
  }
  assert {
    condition = length(aws_vpc_endpoint.secretsmanager) == 1 && anytrue([
      for s in data.aws_iam_policy_document.task.statement :
      s.sid == "ReadTheAppDatabaseSecret" && anytrue([for c in s.condition : c.variable == "aws:SourceVpce" && toset(c.values) == toset([aws_vpc_endpoint.secretsmanager[0].id])])
    ])
    error_message = "with the module's Secrets Manager endpoint, the task reads its secret only through it"
  }
  assert {
    condition     = length(aws_vpc_security_group_ingress_rule.service_metrics_from_scrapers) == 1 && aws_vpc_security_group_ingress_rule.service_metrics_from_scrapers["sg-prometheus"].from_port == 9090 && aws_vpc_security_group_ingress_rule.service_metrics_from_scrapers["sg-prometheus"].referenced_security_group_id == "sg-prometheus"
    error_message = "the scrapers' security groups reach the metrics port"
  }
  assert {
    condition     = length(aws_kms_key.tokens) == 2 && toset(keys(output.kms_key_arns)) == toset(["1", "2"])
    error_message = "one token key per generation"
  }
  assert {
    condition = anytrue([
      for s in data.aws_iam_policy_document.rewrap_operator.statement :
      s.effect == "Deny" && s.actions == toset(["kms:ReEncryptTo"]) && try(contains(s.not_resources, "arn:aws:kms:eu-west-1:210987654321:key/99999999-8888-7777-6666-555555555555"), false)
      ]) && anytrue([
      for s in data.aws_iam_policy_document.rewrap_operator.statement :
      s.sid == "ReEncryptToApprovedExternalKeys" && s.resources == toset(["arn:aws:kms:eu-west-1:210987654321:key/99999999-8888-7777-6666-555555555555"])
    ])
    error_message = "an approved external key is excluded from the ReEncryptTo deny and allowed explicitly (cross-account use)"
  }
  assert {
    condition     = length(aws_sns_topic_subscription.alarms) == 1 && one(values(aws_sns_topic_subscription.alarms)).endpoint == "oncall@example.com"
    error_message = "alarm_subscriptions subscribe to the alarm topic"
  }
}

run "providers_and_lake" {
  command = apply

  variables {
    create_cloudtrail_lake = true
    oauth_providers = {
      google = { client_id = "abc.apps.googleusercontent.com" }
      microsoft = {
        client_id              = "m"
        kind                   = "oauth2"
        token_endpoint         = "https://login.microsoftonline.com/common/oauth2/v2.0/token"
        rotates_refresh_tokens = true
      }
    }
  }

  assert {
    condition     = length(aws_secretsmanager_secret.provider_client_secret) == 2
    error_message = "one Secrets Manager entry per provider"
  }
  assert {
    condition = toset([for e in jsondecode(aws_ecs_task_definition.service.container_definitions)[0].environment : e.name if startswith(e.name, "TOKEN_STORE_PROVIDERS__")]) == toset([
      "TOKEN_STORE_PROVIDERS__GOOGLE__CLIENT_ID",
      "TOKEN_STORE_PROVIDERS__MICROSOFT__CLIENT_ID",
      "TOKEN_STORE_PROVIDERS__MICROSOFT__KIND",
      "TOKEN_STORE_PROVIDERS__MICROSOFT__TOKEN_ENDPOINT",
      "TOKEN_STORE_PROVIDERS__MICROSOFT__ROTATES_REFRESH_TOKENS",
    ])
    error_message = "provider settings become TOKEN_STORE_PROVIDERS__<NAME>__<KEY>, unset ones are left out"
  }
  assert {
    condition = toset([for s in jsondecode(aws_ecs_task_definition.service.container_definitions)[0].secrets : s.name]) == toset([
      "TOKEN_STORE_CLIENTS",
      "TOKEN_STORE_PROVIDERS__GOOGLE__CLIENT_SECRET",
      "TOKEN_STORE_PROVIDERS__MICROSOFT__CLIENT_SECRET",
    ])
    error_message = "secrets: the clients list and one client secret per provider (the database password is read at run time)"
  }
  assert {
    condition     = length(aws_cloudtrail_event_data_store.kms) == 1
    error_message = "CloudTrail Lake event data store on request"
  }
}

run "existing_trail" {
  command = apply

  variables {
    create_cloudtrail = false
  }

  assert {
    condition     = length(aws_cloudtrail.kms) == 0 && length(aws_cloudwatch_metric_alarm.kms_throttling) == 0 && output.cloudtrail_bucket_name == null && length(aws_s3_bucket_object_lock_configuration.trail) == 0
    error_message = "no trail, no trail-based alarms"
  }
  assert {
    condition     = length(aws_cloudwatch_event_rule.audit) == 3
    error_message = "the EventBridge audit alarms work with any trail, so they stay"
  }
}

run "connection_budget_exceeded" {
  command = plan

  variables {
    # 40 tasks during a deployment x 21 connections + 30 reserved = 870 > 400
    autoscaling_max_tasks = 20
  }

  expect_failures = [aws_appautoscaling_target.service]
}

run "object_lock_longer_than_retention" {
  command = plan

  variables {
    cloudtrail_object_lock_days  = 3000
    cloudtrail_s3_retention_days = 2557
  }

  expect_failures = [aws_s3_bucket_object_lock_configuration.trail]
}

run "rejects_root_as_key_admin" {
  command = plan

  variables {
    kms_key_admin_role_arn = "arn:aws:iam::123456789012:root"
  }

  expect_failures = [var.kms_key_admin_role_arn]
}

run "rejects_bad_provider_name" {
  command = plan

  variables {
    oauth_providers = { "Bad-Name" = { client_id = "x" } }
  }

  expect_failures = [var.oauth_providers]
}
