# The service on ECS Fargate behind an internal ALB, its log group, its roles, and a second
# task definition for `token-store rewrap` run as the operator role.

locals {
  # Without a URL secret: a URL with no password (sqlx adds PGPASSWORD from the RDS
  # secret), TLS verified against the RDS CA bundle the image carries.
  database_url = join("", [
    "postgres://${var.db_username}@${aws_db_instance.this.address}:${aws_db_instance.this.port}/${var.db_name}",
    "?sslmode=${var.db_sslmode}&sslrootcert=/etc/token-store/rds-global-bundle.pem",
  ])

  common_environment = merge(
    {
      AWS_REGION                     = local.region
      RUST_LOG                       = var.log_level
      TOKEN_STORE_CONFIG             = local.container_config_path
      TOKEN_STORE_SERVER__LOG_FORMAT = "json"
      # The alias, so that pointing it at another key (after a rewrap) moves new writes.
      TOKEN_STORE_KMS__KEY_ID = aws_kms_alias.tokens.arn
    },
    var.database_url_secret_arn == null ? { TOKEN_STORE_DATABASE__URL = local.database_url } : {},
  )

  provider_environment = merge([
    for name, p in var.oauth_providers : merge(
      { "TOKEN_STORE_PROVIDERS__${upper(name)}__CLIENT_ID" = p.client_id },
      p.kind == null ? {} : { "TOKEN_STORE_PROVIDERS__${upper(name)}__KIND" = p.kind },
      p.token_endpoint == null ? {} : { "TOKEN_STORE_PROVIDERS__${upper(name)}__TOKEN_ENDPOINT" = p.token_endpoint },
      p.revoke_endpoint == null ? {} : { "TOKEN_STORE_PROVIDERS__${upper(name)}__REVOKE_ENDPOINT" = p.revoke_endpoint },
      p.client_auth == null ? {} : { "TOKEN_STORE_PROVIDERS__${upper(name)}__CLIENT_AUTH" = p.client_auth },
      p.rotates_refresh_tokens == null ? {} : { "TOKEN_STORE_PROVIDERS__${upper(name)}__ROTATES_REFRESH_TOKENS" = tostring(p.rotates_refresh_tokens) },
    )
  ]...)

  service_environment = merge(
    local.common_environment,
    {
      TOKEN_STORE_SERVER__LISTEN             = "0.0.0.0:${var.container_port}"
      TOKEN_STORE_DATABASE__MIGRATE_ON_START = tostring(var.migrate_on_start)
      TOKEN_STORE_KMS__CACHE_TTL_SECONDS     = tostring(var.kms_cache_ttl_seconds)
    },
    local.provider_environment,
    var.extra_environment,
  )
}

resource "aws_cloudwatch_log_group" "service" {
  name              = "/ecs/${var.name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.infra.arn
}

resource "aws_ecs_cluster" "this" {
  name = var.name

  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

# ---------------------------------------------------------------------------------------
# Roles

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = ["arn:${local.partition}:ecs:${local.region}:${local.account_id}:*"]
    }
  }
}

# Pulls the image, writes logs, reads the secrets into the environment. Never runs code.
resource "aws_iam_role" "execution" {
  name               = "${var.name}-execution"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

resource "aws_iam_role_policy_attachment" "execution_managed" {
  role       = aws_iam_role.execution.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

data "aws_iam_policy_document" "execution_secrets" {
  statement {
    sid       = "ReadTokenStoreSecrets"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = local.readable_secret_arns
  }
  statement {
    sid       = "DecryptTokenStoreSecrets"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.infra.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["secretsmanager.${local.region}.${local.dns_suffix}"]
    }
  }
}

resource "aws_iam_role_policy" "execution_secrets" {
  name   = "read-token-store-secrets"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution_secrets.json
}

# The service's identity. It has no IAM policy on purpose: the token key's policy names this
# role for GenerateDataKey/Decrypt/DescribeKey (with the encryption-context condition), and
# the service calls nothing else in AWS.
resource "aws_iam_role" "task" {
  name               = "${var.name}-task"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

# The operator identity for `token-store rewrap`: ReEncryptFrom/ReEncryptTo (and DescribeKey)
# by the token key's policy, nothing else. Used by the rewrap task definition below, or
# assumed by the principals in rewrap_operator_principal_arns.
data "aws_iam_policy_document" "rewrap_operator_assume" {
  source_policy_documents = [data.aws_iam_policy_document.ecs_tasks_assume.json]

  dynamic "statement" {
    for_each = length(var.rewrap_operator_principal_arns) > 0 ? [1] : []
    content {
      sid     = "Operators"
      actions = ["sts:AssumeRole"]
      principals {
        type        = "AWS"
        identifiers = var.rewrap_operator_principal_arns
      }
    }
  }
}

resource "aws_iam_role" "rewrap_operator" {
  name                 = "${var.name}-rewrap-operator"
  assume_role_policy   = data.aws_iam_policy_document.rewrap_operator_assume.json
  max_session_duration = 43200
}

# ---------------------------------------------------------------------------------------
# Task definitions

resource "aws_ecs_task_definition" "service" {
  family                   = var.name
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.task_cpu
  memory                   = var.task_memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.cpu_architecture
  }

  container_definitions = jsonencode([
    {
      name      = "token-store"
      image     = var.container_image
      essential = true
      # The image's CMD: serve --config /etc/token-store/token-store.toml
      portMappings = [
        {
          containerPort = var.container_port
          protocol      = "tcp"
        },
      ]
      environment            = [for k in sort(keys(local.service_environment)) : { name = k, value = local.service_environment[k] }]
      secrets                = local.service_secrets
      readonlyRootFilesystem = true
      stopTimeout            = 30
      logConfiguration = {
        logDriver = "awslogs"
        options = {
          awslogs-group         = aws_cloudwatch_log_group.service.name
          awslogs-region        = local.region
          awslogs-stream-prefix = "service"
          mode                  = "non-blocking"
          max-buffer-size       = "25m"
        }
      }
    },
  ])
}

# One-off: aws ecs run-task --task-definition <name>-rewrap --overrides '{"containerOverrides":
# [{"name":"token-store","command":["rewrap","--config","/etc/token-store/token-store.toml",
# "--to-key","<key ARN>"]}]}' ... (README, "Rewrap"). Same image and network as the
# service, the operator role as task role, only the database secret.
resource "aws_ecs_task_definition" "rewrap" {
  family                   = "${var.name}-rewrap"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = 256
  memory                   = 512
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.rewrap_operator.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.cpu_architecture
  }

  container_definitions = jsonencode([
    {
      name                   = "token-store"
      image                  = var.container_image
      essential              = true
      command                = ["rewrap", "--help"]
      environment            = [for k in sort(keys(local.common_environment)) : { name = k, value = local.common_environment[k] }]
      secrets                = local.database_secrets
      readonlyRootFilesystem = true
      logConfiguration = {
        logDriver = "awslogs"
        options = {
          awslogs-group         = aws_cloudwatch_log_group.service.name
          awslogs-region        = local.region
          awslogs-stream-prefix = "rewrap"
        }
      }
    },
  ])
}

# ---------------------------------------------------------------------------------------
# Internal load balancer

resource "aws_lb" "this" {
  # Internal: reachable only from the callers' security groups/CIDRs inside the VPC, and
  # every request but the health routes is authenticated by API key.
  name                       = var.name
  internal                   = true
  load_balancer_type         = "application"
  security_groups            = [aws_security_group.alb.id]
  subnets                    = var.private_subnet_ids
  drop_invalid_header_fields = true
  enable_deletion_protection = var.alb_deletion_protection

  # Access logs when alb_access_logs_bucket names a bucket: ALB log delivery needs an SSE-S3
  # bucket with the regional ELB delivery policy, normally the platform's central log bucket.
  dynamic "access_logs" {
    for_each = var.alb_access_logs_bucket == null ? [] : [var.alb_access_logs_bucket]
    content {
      bucket  = access_logs.value
      prefix  = var.name
      enabled = true
    }
  }
}

resource "aws_lb_target_group" "this" {
  # Plain HTTP to the tasks: TLS ends at the internal ALB; ALB-to-task traffic stays in the
  # VPC between two security groups that only admit each other.
  name                 = var.name
  port                 = var.container_port
  protocol             = "HTTP"
  target_type          = "ip"
  vpc_id               = var.vpc_id
  deregistration_delay = 30

  health_check {
    enabled             = true
    path                = "/readyz"
    protocol            = "HTTP"
    matcher             = "200"
    interval            = 15
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }
}

resource "aws_lb_listener" "https" {
  load_balancer_arn = aws_lb.this.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = var.alb_ssl_policy
  certificate_arn   = var.certificate_arn

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.this.arn
  }
}

# ---------------------------------------------------------------------------------------
# Service

resource "aws_ecs_service" "this" {
  name             = var.name
  cluster          = aws_ecs_cluster.this.id
  task_definition  = aws_ecs_task_definition.service.arn
  desired_count    = var.desired_count
  launch_type      = "FARGATE"
  platform_version = "LATEST"

  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200
  health_check_grace_period_seconds  = 60
  enable_execute_command             = false
  propagate_tags                     = "SERVICE"

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.service.id]
    assign_public_ip = false
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.this.arn
    container_name   = "token-store"
    container_port   = var.container_port
  }

  depends_on = [aws_lb_listener.https, aws_iam_role_policy.execution_secrets]
}
