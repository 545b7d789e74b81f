# token-store on AWS: KMS key, RDS PostgreSQL, ECS Fargate behind an internal ALB, Secrets
# Manager entries, CloudTrail for KMS usage, CloudWatch logs and alarms.
#
# A root module: `terraform init && terraform apply -var-file=prod.tfvars`. Nothing here
# names an account, a region or a VPC: they come from the provider's credentials (data
# sources below) and from variables. See README.md for every variable and output.

terraform {
  # check blocks and preconditions: 1.5; the offline tests (mock_provider): 1.7.
  required_version = ">= 1.5"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # 5.100 is the version the repository is checked against (.terraform.lock.hcl, the
      # offline mirror); every attribute used here exists in it (rotation_period_in_days
      # needs >= 5.49, aws_cloudwatch_event_rule.state and
      # aws_secretsmanager_secret_rotation.rotate_immediately are later still).
      version = "~> 5.100"
    }
  }
}

provider "aws" {
  # null: the standard AWS chain decides (AWS_REGION, profile, ...).
  region = var.region

  default_tags {
    tags = merge(
      {
        Service   = var.name
        ManagedBy = "terraform"
      },
      var.tags,
    )
  }
}

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.name
  dns_suffix = data.aws_partition.current.dns_suffix

  account_root_arn = "arn:${local.partition}:iam::${local.account_id}:root"

  # The encryption context every token-store KMS call carries (src/crypto): the key policy
  # conditions on `purpose`; `user_id` and `provider` make CloudTrail name whose token it was.
  encryption_context_purpose = "integration-token"

  database_subnet_ids = length(var.database_subnet_ids) > 0 ? var.database_subnet_ids : var.private_subnet_ids

  # Config file baked into the image (deploy/token-store.toml); TOKEN_STORE_* variables
  # from the task definition override it.
  container_config_path = "/etc/token-store/token-store.toml"

  trail_name = "${var.name}-kms"
  trail_arn  = "arn:${local.partition}:cloudtrail:${local.region}:${local.account_id}:trail/${local.trail_name}"

  # The database identities. token_store_app is the least-privilege role a migration
  # creates (NOLOGIN; SELECT/INSERT/UPDATE/DELETE on integration_tokens, nothing else):
  # the service logs in as token_store_service, a member of it, created once at bootstrap
  # (README, "Database credentials"), whose password Secrets Manager rotates. The RDS master
  # user only runs migrations (the migrate task definition).
  db_app_role     = "token_store_app"
  db_app_username = "token_store_service"

  # The interface endpoint every token-key call must come through (aws:SourceVpce in the
  # key policy): the platform's, or the one this module creates (network.tf).
  kms_vpc_endpoint_id = var.kms_vpc_endpoint_id != null ? var.kms_vpc_endpoint_id : aws_vpc_endpoint.kms[0].id

  # Connection budget (README, "Database connections"): every task may open its three
  # pools in full, and during a deployment ECS runs up to deployment_maximum_percent of
  # the tasks at once.
  deployment_maximum_percent = 200
  db_connections_per_task    = var.db_pool_max_connections + var.db_lock_pool_connections + var.db_read_connections
  db_peak_tasks              = ceil(var.autoscaling_max_tasks * local.deployment_maximum_percent / 100)
  db_connections_needed      = local.db_peak_tasks * local.db_connections_per_task + var.db_reserved_connections
}
