# Every output is described in README.md ("Outputs").

output "kms_key_arn" {
  description = "ARN of the active token key (the last of token_key_generations; alias/<name> points at it)."
  value       = local.active_token_key.arn
}

output "kms_key_id" {
  description = "Key id of the active token key."
  value       = local.active_token_key.key_id
}

output "kms_key_arns" {
  description = "Token key ARN of every generation in token_key_generations (generation => ARN)."
  value       = { for generation, key in aws_kms_key.tokens : generation => key.arn }
}

output "kms_vpc_endpoint_id" {
  description = "The KMS interface endpoint the token keys require (aws:SourceVpce)."
  value       = local.kms_vpc_endpoint_id
}

output "kms_alias_arn" {
  description = "ARN of alias/<name>, the value the service gets as TOKEN_STORE_KMS__KEY_ID."
  value       = aws_kms_alias.tokens.arn
}

output "infra_kms_key_arn" {
  description = "ARN of the key that encrypts RDS, secrets, logs, the trail and the alarm topic."
  value       = aws_kms_key.infra.arn
}

output "service_url" {
  description = "Internal HTTPS base URL (the ALB's DNS name; point a name on the certificate at it)."
  value       = "https://${aws_lb.this.dns_name}"
}

output "alb_dns_name" {
  description = "DNS name of the internal ALB."
  value       = aws_lb.this.dns_name
}

output "alb_zone_id" {
  description = "Hosted zone id of the ALB, for a Route 53 alias record."
  value       = aws_lb.this.zone_id
}

output "ecs_cluster_name" {
  description = "ECS cluster name."
  value       = aws_ecs_cluster.this.name
}

output "ecs_service_name" {
  description = "ECS service name."
  value       = aws_ecs_service.this.name
}

output "rewrap_task_definition_arn" {
  description = "Task definition for `token-store rewrap` to alias/<name> under the operator role (run with aws ecs run-task, see README)."
  value       = aws_ecs_task_definition.rewrap.arn
}

output "migrate_task_definition_arn" {
  description = "Task definition for `token-store migrate` as the RDS master user (run with aws ecs run-task before each deployment that brings migrations)."
  value       = aws_ecs_task_definition.migrate.arn
}

output "task_role_arn" {
  description = "Role of the service's tasks (the only principal that can GenerateDataKey/Decrypt with the token key)."
  value       = aws_iam_role.task.arn
}

output "rewrap_operator_role_arn" {
  description = "Operator role with ReEncryptFrom/ReEncryptTo on the token keys (to approved destinations only)."
  value       = aws_iam_role.rewrap_operator.arn
}

output "execution_role_arn" {
  description = "ECS execution role (image pull, logs, secrets into the environment)."
  value       = aws_iam_role.execution.arn
}

output "service_security_group_id" {
  description = "Security group of the tasks."
  value       = aws_security_group.service.id
}

output "alb_security_group_id" {
  description = "Security group of the ALB."
  value       = aws_security_group.alb.id
}

output "db_security_group_id" {
  description = "Security group of the database."
  value       = aws_security_group.db.id
}

output "private_subnet_ids" {
  description = "Subnets of the tasks (for aws ecs run-task of the rewrap task)."
  value       = var.private_subnet_ids
}

output "db_endpoint" {
  description = "host:port of the RDS instance."
  value       = aws_db_instance.this.endpoint
}

output "db_master_user_secret_arn" {
  description = "Secrets Manager secret RDS keeps the master credentials in (JSON with username and password); used by the migrate task only."
  value       = aws_db_instance.this.master_user_secret[0].secret_arn
}

output "db_app_secret_arn" {
  description = "Secrets Manager secret of the token_store_service credentials (RDS JSON shape; a member of the token_store_app role), read by the service and rotated every db_app_password_rotation_days."
  value       = aws_secretsmanager_secret.db_app.arn
}

output "provider_client_secret_arns" {
  description = "Secrets Manager secret per OAuth provider, to put the client secret into."
  value       = { for name, secret in aws_secretsmanager_secret.provider_client_secret : name => secret.arn }
}

output "clients_secret_arn" {
  description = "Secrets Manager secret to put the API clients list into."
  value       = aws_secretsmanager_secret.clients.arn
}

output "service_log_group_name" {
  description = "CloudWatch log group of the service's JSON logs (and the audit events)."
  value       = aws_cloudwatch_log_group.service.name
}

output "cloudtrail_bucket_name" {
  description = "S3 bucket of the KMS trail (Athena LOCATION: s3://<bucket>/AWSLogs/<account>/CloudTrail/); null when create_cloudtrail is false."
  value       = var.create_cloudtrail ? aws_s3_bucket.trail[0].id : null
}

output "cloudtrail_arn" {
  description = "ARN of the trail; null when create_cloudtrail is false."
  value       = var.create_cloudtrail ? aws_cloudtrail.kms[0].arn : null
}

output "cloudtrail_log_group_name" {
  description = "CloudWatch log group holding the trail's copy; null when create_cloudtrail is false."
  value       = var.create_cloudtrail ? aws_cloudwatch_log_group.trail[0].name : null
}

output "cloudtrail_event_data_store_arn" {
  description = "ARN of the CloudTrail Lake event data store (FROM <its id> in Lake SQL); null unless create_cloudtrail_lake."
  value       = var.create_cloudtrail_lake ? aws_cloudtrail_event_data_store.kms[0].arn : null
}

output "alarm_topic_arn" {
  description = "SNS topic every alarm and audit event rule notifies (alarm_subscriptions subscribe to it)."
  value       = aws_sns_topic.alarms.arn
}

output "audit_event_rule_arns" {
  description = "EventBridge rules that publish trail tampering, key administration and rewrap operator use to the alarm topic."
  value       = { for name, rule in aws_cloudwatch_event_rule.audit : name => rule.arn }
}
