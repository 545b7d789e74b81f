# Security groups and the interface endpoints this service depends on. The VPC, its
# subnets and NAT belong to the platform and come in as variables. Each group is opened only
# to the next hop:
#   callers --443--> alb --container_port--> service --5432--> db
#   metrics scrapers --metrics_port--> service          (never through the ALB)
#   service --443--> KMS interface endpoint              (the token keys accept nothing else)
#   rotation Lambda --5432--> db, --443--> Secrets Manager

resource "aws_security_group" "alb" {
  name        = "${var.name}-alb"
  description = "token-store internal ALB: HTTPS from the configured callers only"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "alb_from_client_sgs" {
  for_each = toset(var.client_security_group_ids)

  security_group_id            = aws_security_group.alb.id
  description                  = "HTTPS from caller security group ${each.value}"
  referenced_security_group_id = each.value
  ip_protocol                  = "tcp"
  from_port                    = 443
  to_port                      = 443
}

resource "aws_vpc_security_group_ingress_rule" "alb_from_client_cidrs" {
  for_each = toset(var.client_cidr_blocks)

  security_group_id = aws_security_group.alb.id
  description       = "HTTPS from caller network ${each.value}"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_egress_rule" "alb_to_service" {
  security_group_id            = aws_security_group.alb.id
  description                  = "To the token-store tasks (requests and /healthz health checks)"
  referenced_security_group_id = aws_security_group.service.id
  ip_protocol                  = "tcp"
  from_port                    = var.container_port
  to_port                      = var.container_port
}

# ---------------------------------------------------------------------------------------

resource "aws_security_group" "service" {
  name        = "${var.name}-service"
  description = "token-store Fargate tasks (service and rewrap)"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "service_from_alb" {
  security_group_id            = aws_security_group.service.id
  description                  = "From the internal ALB only"
  referenced_security_group_id = aws_security_group.alb.id
  ip_protocol                  = "tcp"
  from_port                    = var.container_port
  to_port                      = var.container_port
}

# /metrics on its own listener (TOKEN_STORE_SERVER__METRICS_LISTEN): only the scrapers'
# security groups reach it; the ALB's group may send only to container_port.
resource "aws_vpc_security_group_ingress_rule" "service_metrics_from_scrapers" {
  for_each = toset(var.metrics_scraper_security_group_ids)

  security_group_id            = aws_security_group.service.id
  description                  = "Prometheus /metrics from scraper security group ${each.value}"
  referenced_security_group_id = each.value
  ip_protocol                  = "tcp"
  from_port                    = var.metrics_port
  to_port                      = var.metrics_port
}

resource "aws_vpc_security_group_egress_rule" "service_to_db" {
  security_group_id            = aws_security_group.service.id
  description                  = "PostgreSQL on RDS"
  referenced_security_group_id = aws_security_group.db.id
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
}

# KMS, Secrets Manager, ECR, CloudWatch Logs and the OAuth providers' token endpoints
# (oauth2.googleapis.com, login.microsoftonline.com, ...) are HTTPS endpoints without
# stable addresses: 443 to anywhere, through the VPC's NAT or VPC endpoints.
resource "aws_vpc_security_group_egress_rule" "service_https" {
  security_group_id = aws_security_group.service.id
  description       = "HTTPS to AWS APIs and OAuth provider endpoints"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

# ---------------------------------------------------------------------------------------

resource "aws_security_group" "db" {
  name        = "${var.name}-db"
  description = "token-store RDS PostgreSQL: from the token-store tasks and the rotation Lambda only; no egress"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "db_from_service" {
  security_group_id            = aws_security_group.db.id
  description                  = "PostgreSQL from the token-store tasks (service, migrate, rewrap)"
  referenced_security_group_id = aws_security_group.service.id
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
}

resource "aws_vpc_security_group_ingress_rule" "db_from_rotation" {
  security_group_id            = aws_security_group.db.id
  description                  = "PostgreSQL from the password rotation Lambda"
  referenced_security_group_id = aws_security_group.db_rotation.id
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
}

# ---------------------------------------------------------------------------------------
# The rotation Lambda of the application database secret (secrets.tf).

resource "aws_security_group" "db_rotation" {
  #checkov:skip=CKV2_AWS_5: Attached to the rotation Lambda that the serverless application repository stack creates (its vpcSecurityGroupIds parameter), which checkov cannot follow.
  name        = "${var.name}-db-rotation"
  description = "token-store database password rotation Lambda: PostgreSQL and HTTPS out, nothing in"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_egress_rule" "db_rotation_to_db" {
  security_group_id            = aws_security_group.db_rotation.id
  description                  = "PostgreSQL on RDS (log in as the application role, set its new password)"
  referenced_security_group_id = aws_security_group.db.id
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
}

resource "aws_vpc_security_group_egress_rule" "db_rotation_https" {
  security_group_id = aws_security_group.db_rotation.id
  description       = "HTTPS to Secrets Manager (NAT or interface endpoint)"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

# ---------------------------------------------------------------------------------------
# Interface endpoints. KMS: the token keys' policy admits the service and the operator only
# through kms_vpc_endpoint_id (aws:SourceVpce), so task credentials used anywhere else,
# even from the tasks themselves through NAT, are refused. This module creates the endpoint
# unless the platform already has one (with private DNS) in the VPC; a second endpoint with
# private DNS for the same service cannot be created there.

locals {
  create_vpc_endpoints_security_group = var.kms_vpc_endpoint_id == null || var.create_secretsmanager_vpc_endpoint
}

resource "aws_security_group" "vpc_endpoints" {
  count = local.create_vpc_endpoints_security_group ? 1 : 0

  name        = "${var.name}-vpc-endpoints"
  description = "Interface endpoints created by token-store: HTTPS from its tasks (and the rotation Lambda) only"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "vpc_endpoints_from_service" {
  count = local.create_vpc_endpoints_security_group ? 1 : 0

  security_group_id            = aws_security_group.vpc_endpoints[0].id
  description                  = "HTTPS from the token-store tasks"
  referenced_security_group_id = aws_security_group.service.id
  ip_protocol                  = "tcp"
  from_port                    = 443
  to_port                      = 443
}

resource "aws_vpc_security_group_ingress_rule" "vpc_endpoints_from_rotation" {
  count = local.create_vpc_endpoints_security_group ? 1 : 0

  security_group_id            = aws_security_group.vpc_endpoints[0].id
  description                  = "HTTPS from the password rotation Lambda (Secrets Manager)"
  referenced_security_group_id = aws_security_group.db_rotation.id
  ip_protocol                  = "tcp"
  from_port                    = 443
  to_port                      = 443
}

resource "aws_vpc_endpoint" "kms" {
  count = var.kms_vpc_endpoint_id == null ? 1 : 0

  vpc_id              = var.vpc_id
  service_name        = "com.amazonaws.${local.region}.kms"
  vpc_endpoint_type   = "Interface"
  subnet_ids          = var.private_subnet_ids
  security_group_ids  = [aws_security_group.vpc_endpoints[0].id]
  private_dns_enabled = true

  tags = { Name = "${var.name}-kms" }
}

# Secrets Manager: the service now reads its database secret at run time, and the rotation
# Lambda calls Secrets Manager too. Needed when the subnets have neither NAT nor an
# endpoint of the platform's.
resource "aws_vpc_endpoint" "secretsmanager" {
  count = var.create_secretsmanager_vpc_endpoint ? 1 : 0

  vpc_id              = var.vpc_id
  service_name        = "com.amazonaws.${local.region}.secretsmanager"
  vpc_endpoint_type   = "Interface"
  subnet_ids          = var.private_subnet_ids
  security_group_ids  = [aws_security_group.vpc_endpoints[0].id]
  private_dns_enabled = true

  tags = { Name = "${var.name}-secretsmanager" }
}
