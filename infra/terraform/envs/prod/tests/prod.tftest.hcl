# Plans prod's settings (sizes over the stack's production defaults) with the mocked aws provider.
mock_provider "aws" {
  source = "../../mocks"
}

run "prod_plans_three_azs" {
  command = plan

  assert {
    condition     = strcontains(output.stack.kubeconfig_command, "--name cocoseg-prod") && length(module.stack.bucket_names) == 3
    error_message = "prod must plan its cluster cocoseg-prod and the three buckets"
  }
}
