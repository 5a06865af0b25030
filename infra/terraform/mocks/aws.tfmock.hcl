# The mocked aws provider of every `terraform test` here (modules/stack/tests, envs/*/tests):
# no credentials, no network, nothing created. Loaded with mock_provider "aws" { source = ... }.
# Mocked data sources return random strings; IAM documents must be valid JSON and ARNs
# must look like ARNs for the resources that validate them.
mock_data "aws_iam_policy_document" {
  defaults = {
    json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}"
  }
}
mock_data "aws_caller_identity" {
  defaults = {
    account_id = "123456789012"
  }
}
mock_data "aws_region" {
  defaults = {
    id   = "us-west-2"
    name = "us-west-2"
  }
}
mock_data "aws_partition" {
  defaults = {
    partition = "aws"
  }
}
mock_resource "aws_kms_key" {
  defaults = {
    arn = "arn:aws:kms:us-west-2:123456789012:key/00000000-0000-0000-0000-000000000000"
  }
}
mock_resource "aws_eks_cluster" {
  defaults = {
    identity              = [{ oidc = [{ issuer = "https://oidc.eks.us-west-2.amazonaws.com/id/EXAMPLE" }] }]
    certificate_authority = [{ data = "LS0tLS1CRUdJTg==" }]
  }
}
mock_resource "aws_db_instance" {
  defaults = {
    master_user_secret = [{ secret_arn = "arn:aws:secretsmanager:us-west-2:123456789012:secret:rds-db-EXAMPLE", kms_key_id = "", secret_status = "active" }]
  }
}
mock_resource "aws_s3_bucket" {
  defaults = {
    arn = "arn:aws:s3:::mock-bucket"
  }
}
