module dpoimg

go 1.19
