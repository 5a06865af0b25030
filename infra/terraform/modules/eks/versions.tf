terraform {
  required_version = ">= 1.10"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # 5.100 is the floor because the CI machine's offline provider mirror holds exactly that
      # release; 6.x is admitted so users can upgrade without editing every module.
      version = ">= 5.100, < 7.0"
    }
  }
}
