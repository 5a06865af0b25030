# dev's own settings plan against the stack's types and validations (mocked aws provider, nothing
# created); the stack and its modules are tested in modules/stack/tests.
mock_provider "aws" {
  source = "../../mocks"
}

run "dev_plans" {
  command = plan

  assert {
    condition     = output.stack.kubeconfig_command == "aws eks update-kubeconfig --region us-west-2 --name cocoseg-dev"
    error_message = "dev must plan its own cluster, cocoseg-dev"
  }
}
