# bench/run.py --policy rego|opa: the same decisions as the bench's [[rules]],
# in Rego. The hot principal: the whole bucket (bucket scope, so S1 stays
# warm); the cold group: GetObject under cold/ except *.secret, for the
# exact key only (every S4 request a cold decision).
package s3gate

import rego.v1

decision := {"allow": true, "scope_prefix": ""} if {
	input.principal == "hot"
	input.bucket == "bench"
}

decision := {"allow": true} if {
	"cold" in input.groups
	input.action == "s3:GetObject"
	input.bucket == "bench"
	startswith(input.key, "cold/")
	not endswith(input.key, ".secret")
}
