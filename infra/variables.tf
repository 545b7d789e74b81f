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
  description = "Private subnets (at least two AZs) for the internal ALB, the Fargate tasks, the KMS endpoint and the rotation Lambda. They need outbound HTTPS (NAT gateway or VPC endpoints) to Secrets Manager, ECR, CloudWatch Logs and the OAuth providers; KMS goes through the interface endpoint."
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
  description = "Number of tasks when the service is created; afterwards autoscaling owns the count. Use 0 (with autoscaling_min_tasks = 0) for the first apply (see README, Deploying)."
  type        = number
  default     = 2
}

variable "metrics_port" {
  description = "Port of the separate /metrics listener in the task (TOKEN_STORE_SERVER__METRICS_LISTEN); reachable only from metrics_scraper_security_group_ids, never through the ALB."
  type        = number
  default     = 9090

  validation {
    condition     = var.metrics_port >= 1024 && var.metrics_port <= 65535
    error_message = "metrics_port: 1024-65535 (the image runs as a non-root user)."
  }
}

variable "metrics_scraper_security_group_ids" {
  description = "Security groups of the Prometheus scrapers allowed to reach metrics_port on the tasks."
  type        = list(string)
  default     = []
}

variable "autoscaling_min_tasks" {
  description = "Fewest tasks autoscaling keeps running."
  type        = number
  default     = 2
}

variable "autoscaling_max_tasks" {
  description = "Most tasks autoscaling may run; checked against the database connection budget (rds_max_connections)."
  type        = number
  default     = 6

  validation {
    condition     = var.autoscaling_max_tasks >= 1
    error_message = "autoscaling_max_tasks: at least 1."
  }
}

variable "autoscaling_cpu_target_percent" {
  description = "Average CPU utilisation of the service that target tracking keeps the tasks at (%)."
  type        = number
  default     = 60

  validation {
    condition     = var.autoscaling_cpu_target_percent >= 10 && var.autoscaling_cpu_target_percent <= 90
    error_message = "autoscaling_cpu_target_percent: 10-90."
  }
}

variable "log_level" {
  description = "RUST_LOG of the service (tracing EnvFilter syntax)."
  type        = string
  default     = "info"
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

variable "kms_key_admin_role_arn" {
  description = "IAM role that administers the token keys (policy, rotation, aliases, deletion) and cannot use them. AWS requires the principal that creates or changes a key policy to be able to change it again, so Terraform must run as this role (or one that assumes it). Never the account root: that would let any IAM principal allowed kms:PutKeyPolicy give itself Decrypt."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$", var.kms_key_admin_role_arn))
    error_message = "kms_key_admin_role_arn: an IAM role ARN (arn:aws:iam::<account>:role/<name>), not the account root or a user."
  }
}

variable "token_key_generations" {
  description = "Token key generations, oldest first; one KMS key each. alias/<name> points at the last one; older ones only unwrap until `token-store rewrap` has moved their rows (README, Rewrap). Remove a generation only after rewrap reports 0 remaining: that schedules its deletion."
  type        = list(string)
  default     = ["1"]

  validation {
    condition     = length(var.token_key_generations) >= 1 && length(distinct(var.token_key_generations)) == length(var.token_key_generations) && alltrue([for g in var.token_key_generations : can(regex("^[a-z0-9-]{1,16}$", g))])
    error_message = "token_key_generations: at least one, distinct, each 1-16 of [a-z0-9-]."
  }
}

variable "rewrap_destination_key_arns" {
  description = "KMS key ARNs outside this module that `token-store rewrap` may move data keys to, besides the token key generations. The rewrap operator role is denied ReEncryptTo on every other key."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for arn in var.rewrap_destination_key_arns : can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/.+$", arn))])
    error_message = "rewrap_destination_key_arns: key ARNs (arn:aws:kms:<region>:<account>:key/<id>), not aliases."
  }
}

variable "kms_vpc_endpoint_id" {
  description = "Existing KMS interface endpoint (vpce-...) in vpc_id, with private DNS, that the tasks use. null: this module creates one. The token keys accept the service's and the operator's calls only through this endpoint (aws:SourceVpce)."
  type        = string
  default     = null
}

variable "create_secretsmanager_vpc_endpoint" {
  description = "Create a Secrets Manager interface endpoint (private DNS) in the tasks' subnets, for subnets without NAT and without the platform's endpoint. The task role then reads its database secret only through it."
  type        = bool
  default     = false
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
  description = "Master user name; its password is generated and kept by RDS in Secrets Manager. Only the migrate task connects as it."
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

variable "db_app_password_rotation_days" {
  description = "Days between rotations of the token_store_service password (the service's database login) by Secrets Manager (single-user rotation Lambda)."
  type        = number
  default     = 30

  validation {
    condition     = var.db_app_password_rotation_days >= 1 && var.db_app_password_rotation_days <= 365
    error_message = "db_app_password_rotation_days: 1-365."
  }
}

variable "db_pool_max_connections" {
  description = "Request pool of each task (TOKEN_STORE_DATABASE__MAX_CONNECTIONS)."
  type        = number
  default     = 16
}

variable "db_lock_pool_connections" {
  description = "Refresh-lock pool of each task (TOKEN_STORE_DATABASE__LOCK_POOL_CONNECTIONS)."
  type        = number
  default     = 4
}

variable "db_read_connections" {
  description = "Batched-read connections of each task (TOKEN_STORE_DATABASE__READ_CONNECTIONS)."
  type        = number
  default     = 1
}

variable "db_reserved_connections" {
  description = "Connections kept free for everything but the service: the migrate and rewrap tasks, the rotation Lambda, operators' psql sessions."
  type        = number
  default     = 30
}

variable "rds_max_connections" {
  description = "Connections the database admits for the service's role: max_connections of db_instance_class minus the superuser-reserved ones. Plan fails when the service could open more (README, Database connections)."
  type        = number
  default     = 400
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

variable "cloudtrail_object_lock_days" {
  description = "S3 Object Lock retention (compliance mode) of every trail log file: nobody in the account, root included, can delete or overwrite it for this long, and it cannot be shortened. At most cloudtrail_s3_retention_days."
  type        = number
  default     = 365

  validation {
    condition     = var.cloudtrail_object_lock_days >= 1
    error_message = "cloudtrail_object_lock_days: at least 1."
  }
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

variable "alarm_subscriptions" {
  description = "Subscriptions to the alarm topic, e.g. [{ protocol = \"email\", endpoint = \"oncall@example.com\" }] (email ones must be confirmed by their recipient) or an https/sqs/lambda endpoint."
  type = list(object({
    protocol = string
    endpoint = string
  }))
  default = []

  validation {
    condition     = alltrue([for s in var.alarm_subscriptions : contains(["email", "email-json", "https", "sqs", "lambda", "sms", "firehose"], s.protocol)])
    error_message = "alarm_subscriptions: protocol is one of email, email-json, https, sqs, lambda, sms, firehose."
  }
}

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

variable "alarm_database_unavailable" {
  description = "Alarm when more token operations than this failed with database_unavailable in 5 minutes."
  type        = number
  default     = 0
}

variable "alarm_kms_unavailable" {
  description = "Alarm when more token operations than this failed with kms_unavailable in 5 minutes (the service's own view of KMS)."
  type        = number
  default     = 0
}
