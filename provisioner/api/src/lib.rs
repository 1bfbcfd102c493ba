//! `cartwright-api`: the custom resources NodePool and NodeClaim (`cartwright.sh/v1`) and EC2NodeClass
//! (`aws.cartwright.sh/v1`), field-compatible with Karpenter v1, with conversions into core types.
//!
//! Nothing is here yet; the resources arrive with the controller issue.
#![forbid(unsafe_code)]
