module ens-operator/bench/peer-go

go 1.22
