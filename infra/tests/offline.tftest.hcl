# Offline plan+apply of the whole module against a mocked AWS provider (terraform >= 1.7):
# evaluates every expression, for_each and conditional, checks the provider's own argument
# validation (ARNs, enums), and asserts on what the service will see in its environment.
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
}

run "defaults" {
  command = apply

  assert {
    condition     = contains([for s in jsondecode(aws_ecs_task_definition.service.container_definitions)[0].secrets : s.name], "PGPASSWORD")
    error_message = "without database_url_secret_arn the password comes from the RDS-managed secret as PGPASSWORD"
  }
  assert {
    condition = {
      for e in jsondecode(aws_ecs_task_definition.service.container_definitions)[0].environment : e.name => e.value
      if contains(["TOKEN_STORE_SERVER__LOG_FORMAT", "TOKEN_STORE_SERVER__LISTEN", "TOKEN_STORE_KMS__KEY_ID"], e.name)
      } == {
      TOKEN_STORE_SERVER__LOG_FORMAT = "json"
      TOKEN_STORE_SERVER__LISTEN     = "0.0.0.0:8080"
      TOKEN_STORE_KMS__KEY_ID        = "arn:aws:kms:eu-west-1:123456789012:alias/token-store"
    }
    error_message = "the service gets JSON logs, the container listen address and the key alias"
  }
  assert {
    condition     = startswith([for e in jsondecode(aws_ecs_task_definition.service.container_definitions)[0].environment : e.value if e.name == "TOKEN_STORE_DATABASE__URL"][0], "postgres://token_store@token-store.abc.eu-west-1.rds.amazonaws.com:5432/token_store?sslmode=verify-full")
    error_message = "database URL without password, TLS verified"
  }
  assert {
    condition     = aws_lb_target_group.this.health_check[0].path == "/readyz"
    error_message = "health checks go to /readyz"
  }
  assert {
    condition     = length(aws_cloudtrail.kms) == 1 && length(aws_cloudtrail_event_data_store.kms) == 0
    error_message = "trail by default, CloudTrail Lake only on request"
  }
}

run "providers_url_secret_and_lake" {
  command = apply

  variables {
    create_cloudtrail_lake  = true
    database_url_secret_arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:token-store/db-url"
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
      "TOKEN_STORE_DATABASE__URL",
      "TOKEN_STORE_CLIENTS",
      "TOKEN_STORE_PROVIDERS__GOOGLE__CLIENT_SECRET",
      "TOKEN_STORE_PROVIDERS__MICROSOFT__CLIENT_SECRET",
    ])
    error_message = "secrets: URL secret instead of PGPASSWORD, the clients list, one client secret per provider"
  }
  assert {
    condition     = length([for e in jsondecode(aws_ecs_task_definition.service.container_definitions)[0].environment : e if e.name == "TOKEN_STORE_DATABASE__URL"]) == 0
    error_message = "no plain TOKEN_STORE_DATABASE__URL when the URL is a secret"
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
    condition     = length(aws_cloudtrail.kms) == 0 && length(aws_cloudwatch_metric_alarm.kms_throttling) == 0 && output.cloudtrail_bucket_name == null
    error_message = "no trail, no trail-based alarms"
  }
}

run "rejects_bad_provider_name" {
  command = plan

  variables {
    oauth_providers = { "Bad-Name" = { client_id = "x" } }
  }

  expect_failures = [var.oauth_providers]
}
