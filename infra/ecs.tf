# The service on ECS Fargate behind an internal ALB, its log group, its roles, its
# autoscaling, and two one-off task definitions: `token-store migrate` as the RDS master
# user and `token-store rewrap` as the rewrap operator role.

locals {
  # URLs without a password, TLS verified against the RDS CA bundle the image carries.
  # The service and rewrap connect as the application role; migrate as the master user.
  database_url_query  = "?sslmode=${var.db_sslmode}&sslrootcert=/etc/token-store/rds-global-bundle.pem"
  database_host       = "${aws_db_instance.this.address}:${aws_db_instance.this.port}"
  app_database_url    = "postgres://${local.db_app_username}@${local.database_host}/${var.db_name}${local.database_url_query}"
  master_database_url = "postgres://${var.db_username}@${local.database_host}/${var.db_name}${local.database_url_query}"

  common_environment = {
    AWS_REGION                     = local.region
    RUST_LOG                       = var.log_level
    TOKEN_STORE_CONFIG             = local.container_config_path
    TOKEN_STORE_SERVER__LOG_FORMAT = "json"
    # The alias, so that adding a key generation (which moves it) moves new writes.
    TOKEN_STORE_KMS__KEY_ID = aws_kms_alias.tokens.arn
  }

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
      TOKEN_STORE_SERVER__LISTEN         = "0.0.0.0:${var.container_port}"
      TOKEN_STORE_SERVER__METRICS_LISTEN = "0.0.0.0:${var.metrics_port}"
      TOKEN_STORE_KMS__CACHE_TTL_SECONDS = tostring(var.kms_cache_ttl_seconds)
      # As token_store_service (member of token_store_app), password from the secret, re-read
      # by the service itself (which also takes the user name from the secret).
      TOKEN_STORE_DATABASE__URL                 = local.app_database_url
      TOKEN_STORE_DATABASE__PASSWORD_SECRET_ARN = aws_secretsmanager_secret.db_app.arn
      TOKEN_STORE_DATABASE__MIGRATE_ON_START    = "false"
      # The pool sizes the connection budget is computed from (main.tf).
      TOKEN_STORE_DATABASE__MAX_CONNECTIONS       = tostring(var.db_pool_max_connections)
      TOKEN_STORE_DATABASE__LOCK_POOL_CONNECTIONS = tostring(var.db_lock_pool_connections)
      TOKEN_STORE_DATABASE__READ_CONNECTIONS      = tostring(var.db_read_connections)
    },
    local.provider_environment,
    var.extra_environment,
  )

  migrate_environment = merge(local.common_environment, { TOKEN_STORE_DATABASE__URL = local.master_database_url })
  rewrap_environment  = merge(local.common_environment, { TOKEN_STORE_DATABASE__URL = local.app_database_url })
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

# Who may become a task role: ECS tasks of this account, in this region. That is as narrow
# as AWS allows: "Using the aws:SourceArn condition key to specify a specific cluster is
# not currently supported, you should use the wildcard to specify all clusters" (Amazon
# ECS task IAM role documentation), and a task ARN names no task definition. What binds the
# token keys to this service beyond the trust policy: iam:PassRole on the task role (who may
# start a task as it), and the keys' aws:SourceVpce condition with the endpoint's security
# group, which admits only the service's security group (README, "Who can decrypt").
data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    sid     = "EcsTasksOfThisAccountAndRegion"
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

# The service's identity. The token keys' policy names this role for GenerateDataKey/Decrypt/
# DescribeKey (with the encryption-context and VPC-endpoint conditions); its own policy
# allows exactly one more thing: reading the application database secret.
resource "aws_iam_role" "task" {
  name               = "${var.name}-task"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

data "aws_iam_policy_document" "task" {
  statement {
    sid       = "ReadTheAppDatabaseSecret"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [aws_secretsmanager_secret.db_app.arn]

    # With this module's Secrets Manager endpoint, only through it.
    dynamic "condition" {
      for_each = var.create_secretsmanager_vpc_endpoint ? [aws_vpc_endpoint.secretsmanager[0].id] : []
      content {
        test     = "StringEquals"
        variable = "aws:SourceVpce"
        values   = [condition.value]
      }
    }
  }
  statement {
    sid       = "DecryptTheAppDatabaseSecret"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.infra.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["secretsmanager.${local.region}.${local.dns_suffix}"]
    }
  }
}

resource "aws_iam_role_policy" "task" {
  name   = "read-app-database-secret"
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.task.json
}

# The operator identity for `token-store rewrap`: ReEncryptFrom/ReEncryptTo (and DescribeKey)
# by the token keys' policy, nothing else. Used by the rewrap task definition below, or
# assumed by the principals in rewrap_operator_principal_arns. Sessions last an hour at most;
# every AssumeRole of it raises the rewrap-operator alarm (alarms.tf).
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
  max_session_duration = 3600
}

# The destination of a rewrap is not the source key's to decide (KMS has no condition key
# for it), and any key whose own policy names this role could otherwise receive the data
# keys, e.g. a key created for the purpose whose policy also lets its author Decrypt. An
# explicit Deny in the role's own policy wins over every Allow of every key policy: this
# role can ReEncryptTo the approved keys and no other, and can never Decrypt, Encrypt,
# generate data keys or create grants on any key.
data "aws_iam_policy_document" "rewrap_operator" {
  statement {
    sid           = "DenyReEncryptToUnapprovedKeys"
    effect        = "Deny"
    actions       = ["kms:ReEncryptTo"]
    not_resources = local.rewrap_destination_key_arns
  }

  statement {
    sid    = "DenyEveryOtherUseOfAnyKey"
    effect = "Deny"
    actions = [
      "kms:CreateGrant",
      "kms:Decrypt",
      "kms:Encrypt",
      "kms:GenerateDataKey*",
      "kms:PutKeyPolicy",
    ]
    resources = ["*"]
  }

  # Approved keys outside this account need an identity-policy Allow as well as their own
  # key policy (cross-account use); keys of this account are governed by their policy.
  dynamic "statement" {
    for_each = length(var.rewrap_destination_key_arns) > 0 ? [1] : []
    content {
      sid       = "ReEncryptToApprovedExternalKeys"
      actions   = ["kms:ReEncryptTo", "kms:DescribeKey"]
      resources = var.rewrap_destination_key_arns
    }
  }
}

resource "aws_iam_role_policy" "rewrap_operator" {
  name   = "rewrap-destinations"
  role   = aws_iam_role.rewrap_operator.id
  policy = data.aws_iam_policy_document.rewrap_operator.json
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
      # The API on container_port (the ALB's target), /metrics on metrics_port (scrapers only).
      portMappings = [
        {
          containerPort = var.container_port
          protocol      = "tcp"
        },
        {
          containerPort = var.metrics_port
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

# One-off: `token-store migrate` as the RDS master user (README, "Database credentials").
# The only task that can change the schema; it calls no AWS API, so it has no task role.
resource "aws_ecs_task_definition" "migrate" {
  family                   = "${var.name}-migrate"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = 256
  memory                   = 512
  execution_role_arn       = aws_iam_role.execution.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.cpu_architecture
  }

  container_definitions = jsonencode([
    {
      name                   = "token-store"
      image                  = var.container_image
      essential              = true
      command                = ["migrate", "--config", local.container_config_path]
      environment            = [for k in sort(keys(local.migrate_environment)) : { name = k, value = local.migrate_environment[k] }]
      secrets                = local.migrate_database_secrets
      readonlyRootFilesystem = true
      logConfiguration = {
        logDriver = "awslogs"
        options = {
          awslogs-group         = aws_cloudwatch_log_group.service.name
          awslogs-region        = local.region
          awslogs-stream-prefix = "migrate"
        }
      }
    },
  ])
}

# One-off: `token-store rewrap` to the key alias/<name> points at (README, "Rewrap"): run it
# as is after adding a key generation. Same image and network as the service, the operator
# role as task role, token_store_service's password as of the task's start.
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
      command                = ["rewrap", "--config", local.container_config_path, "--to-key", aws_kms_alias.tokens.arn]
      environment            = [for k in sort(keys(local.rewrap_environment)) : { name = k, value = local.rewrap_environment[k] }]
      secrets                = local.rewrap_database_secrets
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

  # /healthz: the process answers, nothing more. A database failover or a KMS blip must not
  # make every target unhealthy at once (ECS would replace every task, and the ALB fail open
  # anyway); /readyz, which asks both, is for operators and the alarms (README, "Health").
  health_check {
    enabled             = true
    path                = "/healthz"
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
  name            = var.name
  cluster         = aws_ecs_cluster.this.id
  task_definition = aws_ecs_task_definition.service.arn
  # The count at creation; from then on the autoscaling target below owns it.
  desired_count    = var.desired_count
  launch_type      = "FARGATE"
  platform_version = "LATEST"

  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = local.deployment_maximum_percent
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

  lifecycle {
    ignore_changes = [desired_count]
  }

  depends_on = [aws_lb_listener.https, aws_iam_role_policy.execution_secrets, aws_iam_role_policy.task]
}

# ---------------------------------------------------------------------------------------
# Autoscaling: target tracking on the service's average CPU, between autoscaling_min_tasks
# and autoscaling_max_tasks. The plan fails when autoscaling_max_tasks could open more
# database connections than rds_max_connections (README, "Database connections").

resource "aws_appautoscaling_target" "service" {
  service_namespace  = "ecs"
  resource_id        = "service/${aws_ecs_cluster.this.name}/${aws_ecs_service.this.name}"
  scalable_dimension = "ecs:service:DesiredCount"
  min_capacity       = var.autoscaling_min_tasks
  max_capacity       = var.autoscaling_max_tasks

  lifecycle {
    precondition {
      condition     = var.autoscaling_min_tasks <= var.autoscaling_max_tasks
      error_message = "autoscaling_min_tasks (${var.autoscaling_min_tasks}) must not exceed autoscaling_max_tasks (${var.autoscaling_max_tasks})."
    }
    precondition {
      condition     = local.db_connections_needed <= var.rds_max_connections
      error_message = "Database connection budget exceeded: ${local.db_peak_tasks} tasks at peak (autoscaling_max_tasks ${var.autoscaling_max_tasks} x deployment_maximum_percent ${local.deployment_maximum_percent}%) x ${local.db_connections_per_task} connections per task (db_pool_max_connections + db_lock_pool_connections + db_read_connections) + db_reserved_connections ${var.db_reserved_connections} = ${local.db_connections_needed}, above rds_max_connections ${var.rds_max_connections}. Lower autoscaling_max_tasks or the pool sizes, or take a larger db_instance_class and raise rds_max_connections."
    }
  }
}

resource "aws_appautoscaling_policy" "cpu" {
  name               = "${var.name}-cpu-target-tracking"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.service.service_namespace
  resource_id        = aws_appautoscaling_target.service.resource_id
  scalable_dimension = aws_appautoscaling_target.service.scalable_dimension

  target_tracking_scaling_policy_configuration {
    predefined_metric_specification {
      predefined_metric_type = "ECSServiceAverageCPUUtilization"
    }
    target_value       = var.autoscaling_cpu_target_percent
    scale_out_cooldown = 60
    scale_in_cooldown  = 300
  }
}
