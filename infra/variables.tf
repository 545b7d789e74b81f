# Every variable is described in README.md ("Variables"); keep the two in step
# (scripts/infra-check.sh fails when one is missing there).

# ---------------------------------------------------------------------------------------
# General

variable "name" {
  description = "Name prefix of every resource (and the KMS alias alias/<name>)."
  type        = string
  default     = "token-store"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,23}$", var.name))
    error_message = "name: 2-24 characters, lowercase letters, digits and '-', starting with a letter (it ends up in bucket and RDS names)."
  }
}

variable "region" {
  description = "AWS region to deploy to; null leaves it to the standard AWS chain (AWS_REGION, profile)."
  type        = string
  default     = null
}

variable "tags" {
  description = "Extra tags put on every resource (merged into the provider's default_tags)."
  type        = map(string)
  default     = {}
}

# ---------------------------------------------------------------------------------------
# Network (the VPC is not created here)

variable "vpc_id" {
  description = "VPC to deploy into."
  type        = string
}

variable "private_subnet_ids" {
  description = "Private subnets (at least two AZs) for the internal ALB and the Fargate tasks. They need outbound HTTPS (NAT gateway or VPC endpoints) to KMS, Secrets Manager, ECR, CloudWatch Logs and the OAuth providers."
  type        = list(string)

  validation {
    condition     = length(var.private_subnet_ids) >= 2
    error_message = "private_subnet_ids: give at least two subnets in different availability zones."
  }
}

variable "database_subnet_ids" {
  description = "Private subnets for RDS; empty means private_subnet_ids."
  type        = list(string)
  default     = []
}

variable "client_security_group_ids" {
  description = "Security groups of the callers (the IAM services) allowed to reach the ALB on 443."
  type        = list(string)
  default     = []
}

variable "client_cidr_blocks" {
  description = "CIDR blocks allowed to reach the ALB on 443, in addition to client_security_group_ids."
  type        = list(string)
  default     = []
}

# ---------------------------------------------------------------------------------------
# Load balancer

variable "certificate_arn" {
  description = "ACM certificate ARN for the ALB's HTTPS listener (a name in a private zone is fine)."
  type        = string
}

variable "alb_ssl_policy" {
  description = "TLS policy of the HTTPS listener."
  type        = string
  default     = "ELBSecurityPolicy-TLS13-1-2-2021-06"
}

variable "alb_deletion_protection" {
  description = "Deletion protection on the ALB."
  type        = bool
  default     = true
}

variable "alb_access_logs_bucket" {
  description = "Existing S3 bucket (SSE-S3, with the ELB log-delivery bucket policy) for ALB access logs; null disables them."
  type        = string
  default     = null
}

# ---------------------------------------------------------------------------------------
# Service (ECS Fargate)

variable "container_image" {
  description = "Image built from the repository's Dockerfile, preferably pinned by digest (<account>.dkr.ecr.<region>.amazonaws.com/token-store@sha256:...)."
  type        = string
}

variable "container_port" {
  description = "Port the service listens on inside the task (deploy/token-store.toml: 0.0.0.0:8080)."
  type        = number
  default     = 8080
}

variable "cpu_architecture" {
  description = "X86_64 or ARM64: must match the image's platform."
  type        = string
  default     = "X86_64"

  validation {
    condition     = contains(["X86_64", "ARM64"], var.cpu_architecture)
    error_message = "cpu_architecture: X86_64 or ARM64."
  }
}

variable "task_cpu" {
  description = "Fargate task CPU units."
  type        = number
  default     = 512
}

variable "task_memory" {
  description = "Fargate task memory (MiB)."
  type        = number
  default     = 1024
}

variable "desired_count" {
  description = "Number of tasks. Use 0 for the first apply, put the secret values, then raise it (see README)."
  type        = number
  default     = 2
}

variable "log_level" {
  description = "RUST_LOG of the service (tracing EnvFilter syntax)."
  type        = string
  default     = "info"
}

variable "migrate_on_start" {
  description = "Run the database migrations when a task starts (TOKEN_STORE_DATABASE__MIGRATE_ON_START). sqlx serialises concurrent runs with an advisory lock."
  type        = bool
  default     = true
}

variable "kms_cache_ttl_seconds" {
  description = "How long an unwrapped data key stays cached in a task (TOKEN_STORE_KMS__CACHE_TTL_SECONDS): CloudTrail shows at most one Decrypt per row, task and window."
  type        = number
  default     = 300
}

variable "extra_environment" {
  description = "More plain environment variables for the service container, e.g. { TOKEN_STORE_REFRESH__BUFFER_SECONDS = \"600\" }. Never secrets."
  type        = map(string)
  default     = {}
}

variable "oauth_providers" {
  description = "OAuth providers by name ([providers.<name>] in the service's config). The client secret is NOT here: it goes into the Secrets Manager entry this module creates per provider."
  type = map(object({
    client_id              = string
    kind                   = optional(string)
    token_endpoint         = optional(string)
    revoke_endpoint        = optional(string)
    client_auth            = optional(string)
    rotates_refresh_tokens = optional(bool)
  }))
  default = {}

  validation {
    condition     = alltrue([for name in keys(var.oauth_providers) : can(regex("^[a-z][a-z0-9_]{0,31}$", name))])
    error_message = "oauth_providers: names are 1-32 characters of lowercase letters, digits and '_', starting with a letter (they become TOKEN_STORE_PROVIDERS__<NAME>__* variables)."
  }
}

# ---------------------------------------------------------------------------------------
# KMS

variable "kms_key_admin_arns" {
  description = "Principals that administer the token key (policy, rotation, deletion) but may not use it. Empty: the account root, i.e. IAM policies of this account decide."
  type        = list(string)
  default     = []
}

variable "kms_rotation_period_days" {
  description = "Automatic rotation period of the token key (90-2560 days)."
  type        = number
  default     = 365

  validation {
    condition     = var.kms_rotation_period_days >= 90 && var.kms_rotation_period_days <= 2560
    error_message = "kms_rotation_period_days: between 90 and 2560."
  }
}

variable "kms_deletion_window_days" {
  description = "Waiting period before a scheduled deletion of either KMS key takes effect (7-30 days)."
  type        = number
  default     = 30
}

variable "rewrap_operator_principal_arns" {
  description = "Principals (roles, users, SSO permission-set roles) allowed to assume the rewrap operator role, besides ECS tasks started from the rewrap task definition."
  type        = list(string)
  default     = []
}

# ---------------------------------------------------------------------------------------
# Database

variable "db_engine_version" {
  description = "PostgreSQL major version on RDS: 15 or 16 (the parameter group family follows it)."
  type        = string
  default     = "16"

  validation {
    condition     = contains(["15", "16"], var.db_engine_version)
    error_message = "db_engine_version: 15 or 16."
  }
}

variable "db_instance_class" {
  description = "RDS instance class."
  type        = string
  default     = "db.t4g.medium"
}

variable "db_allocated_storage" {
  description = "Initial storage (GiB)."
  type        = number
  default     = 20
}

variable "db_max_allocated_storage" {
  description = "Storage autoscaling ceiling (GiB)."
  type        = number
  default     = 100
}

variable "db_multi_az" {
  description = "Multi-AZ standby."
  type        = bool
  default     = true
}

variable "db_name" {
  description = "Database name."
  type        = string
  default     = "token_store"
}

variable "db_username" {
  description = "Master user name; its password is generated and kept by RDS in Secrets Manager."
  type        = string
  default     = "token_store"
}

variable "db_backup_retention_days" {
  description = "Automated backup retention (days)."
  type        = number
  default     = 14
}

variable "db_deletion_protection" {
  description = "Deletion protection on the instance."
  type        = bool
  default     = true
}

variable "db_iam_authentication" {
  description = "Enable IAM database authentication on the instance (the service itself authenticates with a password; this is for people and tools)."
  type        = bool
  default     = false
}

variable "db_ca_cert_identifier" {
  description = "RDS CA of the server certificate; the image trusts the RDS global bundle."
  type        = string
  default     = "rds-ca-rsa2048-g1"
}

variable "db_sslmode" {
  description = "sslmode of the service's connection URL. verify-full checks the server certificate against the RDS bundle in the image; rds.force_ssl=1 refuses plaintext anyway."
  type        = string
  default     = "verify-full"

  validation {
    condition     = contains(["require", "verify-ca", "verify-full"], var.db_sslmode)
    error_message = "db_sslmode: require, verify-ca or verify-full (never disable/prefer: the server requires TLS)."
  }
}

variable "database_url_secret_arn" {
  description = "Optional Secrets Manager secret holding a complete postgres:// URL (for a dedicated least-privilege database role). null: the service connects as the master user, password injected from the RDS-managed secret."
  type        = string
  default     = null
}

# ---------------------------------------------------------------------------------------
# Logs and audit

variable "log_retention_days" {
  description = "Retention of the service's, RDS's and CloudTrail's CloudWatch log groups (days)."
  type        = number
  default     = 365
}

variable "create_cloudtrail" {
  description = "Create the trail that records KMS calls. Set false only if an existing (organisation) trail already records this account's management events including KMS; docs/audit.md then applies to that trail's bucket."
  type        = bool
  default     = true
}

variable "cloudtrail_s3_retention_days" {
  description = "Days before CloudTrail log files in S3 expire (noncurrent versions: 30 days later)."
  type        = number
  default     = 2557
}

variable "create_cloudtrail_lake" {
  description = "Also create a CloudTrail Lake event data store with the KMS events (SQL without Athena; billed per ingested GB; Lake takes no new customers since 2026-05-31)."
  type        = bool
  default     = false
}

variable "cloudtrail_lake_retention_days" {
  description = "Retention of the CloudTrail Lake event data store (7-3653 days with the default pricing option)."
  type        = number
  default     = 365
}

# ---------------------------------------------------------------------------------------
# Alarms

variable "alarm_action_arns" {
  description = "Extra alarm/OK actions (e.g. an existing SNS topic wired to paging), besides the topic this module creates."
  type        = list(string)
  default     = []
}

variable "alarm_5xx_rate_percent" {
  description = "Alarm when 5xx responses (ALB and targets) exceed this share of requests over 5 minutes."
  type        = number
  default     = 1
}

variable "alarm_refresh_transient_failures" {
  description = "Alarm when refresh calls answered provider_unavailable more often than this in 5 minutes."
  type        = number
  default     = 10
}

variable "alarm_refresh_errors" {
  description = "Alarm when refresh calls failed with internal errors more often than this in 5 minutes."
  type        = number
  default     = 0
}

variable "alarm_refresh_terminal_failures" {
  description = "Alarm when refreshes found dead grants (reauthorization_required) more often than this in 15 minutes: a few are users revoking consent, many mean a broken OAuth client (invalid_client)."
  type        = number
  default     = 25
}

variable "alarm_refresh_attempt_failures" {
  description = "Alarm when the refresh module logged more failed attempts (WARN: provider down or rejecting, lock timeouts) than this in 5 minutes, including those callers never saw."
  type        = number
  default     = 10
}

variable "alarm_kms_throttles" {
  description = "Alarm when CloudTrail records more KMS ThrottlingExceptions than this in 5 minutes."
  type        = number
  default     = 0
}

variable "alarm_kms_quota_percent" {
  description = "Alarm when the account's symmetric KMS request rate exceeds this percentage of its quota (AWS/Usage)."
  type        = number
  default     = 80
}

variable "alarm_kms_unavailable" {
  description = "Alarm when more token operations than this failed with kms_unavailable in 5 minutes (the service's own view of KMS)."
  type        = number
  default     = 0
}
