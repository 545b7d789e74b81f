# token-store on AWS: KMS key, RDS PostgreSQL, ECS Fargate behind an internal ALB, Secrets
# Manager entries, CloudTrail for KMS usage, CloudWatch logs and alarms.
#
# A root module: `terraform init && terraform apply -var-file=prod.tfvars`. Nothing here
# names an account, a region or a VPC: they come from the provider's credentials (data
# sources below) and from variables. See README.md for every variable and output.

terraform {
  required_version = ">= 1.5"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.40"
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

  # Who administers the token key (never uses it): the account root by default, which
  # hands administration to IAM policies in this account.
  key_admin_arns = length(var.kms_key_admin_arns) > 0 ? var.kms_key_admin_arns : [local.account_root_arn]

  # The encryption context every token-store KMS call carries (src/crypto): the key policy
  # conditions on `purpose`; `user_id` and `provider` make CloudTrail name whose token it was.
  encryption_context_purpose = "integration-token"

  database_subnet_ids = length(var.database_subnet_ids) > 0 ? var.database_subnet_ids : var.private_subnet_ids

  # Config file baked into the image (deploy/token-store.toml); TOKEN_STORE_* variables
  # from the task definition override it.
  container_config_path = "/etc/token-store/token-store.toml"

  trail_name = "${var.name}-kms"
  trail_arn  = "arn:${local.partition}:cloudtrail:${local.region}:${local.account_id}:trail/${local.trail_name}"
}
